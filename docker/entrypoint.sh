#!/usr/bin/env bash
# Source ROS 2 and the grrl workspace, then run the command.
set -e
. /opt/ros/jazzy/setup.bash
. /ws/install/setup.bash
exec "$@"
