"""Bring up the grrl graph on a real ROS 2 install: ``ros2 launch grrl_bringup robot.launch.py``.

The nodes come from config/nodes.yaml, the same list the composed runner ``grrl up`` reads.
Arguments: ``groups:=a,b`` (node groups to start), ``namespace:=ns``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from grrl_bringup.node_list import launch_node_kwargs, load_node_list, select


def _nodes(context, *_, **__):
    groups = LaunchConfiguration("groups").perform(context).split(",")
    namespace = LaunchConfiguration("namespace").perform(context)
    entries = select(load_node_list(), groups)
    return [Node(**launch_node_kwargs(entry, namespace)) for entry in entries]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "groups",
                default_value="interface_check",
                description="Comma-separated node groups of config/nodes.yaml to start.",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace for every node."
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
