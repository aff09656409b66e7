"""Offline filtering from a bag replay on a real ROS 2 install (rosbag2's player + learner_node).

    ros2 launch launch/replay_filter.launch.py bag:=demos/episode_00001 critic:=critic_ckpt \
        out_dir:=filter_out rate:=5.0

``ros2 bag play`` publishes the recorded messages (reliable, so a fast replay loses nothing: the
override file below); learner_node builds the episodes from the stream with the same reader core
that reads bags directly and filters them with the critic. Here, without rosbag2, ``grrl replay``
plays a dataset instead (``grrl up --groups learner,replay`` with the same parameters).
"""

import os
import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

RELIABLE_OVERRIDES = """\
/joint_states: {reliability: reliable, history: keep_last, depth: 5000}
/grrl/joint_command: {reliability: reliable, history: keep_last, depth: 5000}
/grrl/object_poses: {reliability: reliable, history: keep_last, depth: 5000}
"""


def _actions(context, *_, **__):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = os.path.join(tempfile.mkdtemp(prefix="grrl_replay_"), "qos.yaml")
    with open(overrides, "w") as handle:
        handle.write(RELIABLE_OVERRIDES)
    learner = Node(
        package="grrl_learner", executable="learner_node", name="learner_node", output="screen",
        parameters=[{"replay": True, "critic": value("critic"), "out_dir": value("out_dir"),
                     "delta": float(value("delta"))}],
    )  # fmt: skip
    player = ExecuteProcess(
        cmd=["ros2", "bag", "play", value("bag"), "--rate", value("rate"),
             "--qos-profile-overrides-path", overrides, "--delay", "2.0"],
        output="screen",
    )  # fmt: skip
    return [learner, player]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory to replay"),
        DeclareLaunchArgument("critic", default_value="", description="critic checkpoint"),
        DeclareLaunchArgument("out_dir", default_value="filter_out"),
        DeclareLaunchArgument("delta", default_value="0.05"),
        DeclareLaunchArgument("rate", default_value="5.0"),
        OpaqueFunction(function=_actions),
    ])  # fmt: skip
