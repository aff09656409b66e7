"""Bring up the grrl graph on a real ROS 2 install: ``ros2 launch grrl_bringup robot.launch.py``.

The nodes come from config/nodes.yaml and the deployment plan from
:func:`grrl_bringup.node_list.plan_graph` — the same list and plan the composed runner
``grrl up`` uses, so both start the same nodes with the same parameters.

Arguments:
  ``sim:=true``        the embedded MuJoCo robot instead of real drivers (all nodes on sim time)
  ``policy:=CKPT``     deploy a checkpoint: policy_node + smoother_node
  ``rviz:=true``       RViz with rviz/grrl.rviz (cameras, predicted paths, progress)
  ``groups:=a,b``      further node groups (teleop, record, …)
  ``namespace:=ns``    namespace for every node
A real robot connects by remapping, e.g. /grrl/joint_command to its trajectory controller.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from grrl_bringup.node_list import launch_node_kwargs, load_node_list, plan_graph, select, share_dir


def _nodes(context, *_, **__):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    plan = plan_graph(
        value("groups").split(","),
        sim=value("sim").lower() == "true",
        policy=value("policy"),
    )
    actions = []
    for entry in select(load_node_list(), plan.groups):
        kwargs = launch_node_kwargs(entry, value("namespace"))
        kwargs["parameters"] = [*kwargs["parameters"], plan.overrides.get(entry.name, {})]
        actions.append(Node(**kwargs))
    if value("rviz").lower() == "true":
        actions.append(Node(
            package="rviz2", executable="rviz2", name="rviz2", output="screen",
            arguments=["-d", str(share_dir() / "rviz" / "grrl.rviz")],
            parameters=[{"use_sim_time": value("sim").lower() == "true"}],
        ))  # fmt: skip
    return actions


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument("sim", default_value="false",
                                  description="Run the embedded MuJoCo robot (grrl_sim)."),
            DeclareLaunchArgument("policy", default_value="",
                                  description="Policy checkpoint to deploy ('' = none)."),
            DeclareLaunchArgument("rviz", default_value="false", description="Start RViz."),
            DeclareLaunchArgument("groups", default_value="",
                                  description="Further node groups of config/nodes.yaml."),
            DeclareLaunchArgument("namespace", default_value="",
                                  description="Namespace for every node."),
            OpaqueFunction(function=_nodes),
        ]
    )  # fmt: skip
