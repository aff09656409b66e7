"""grrl_teleop: teleop relay with retry-keyframe labelling, per-episode recorder.

Filled by the teleop issue.
"""
