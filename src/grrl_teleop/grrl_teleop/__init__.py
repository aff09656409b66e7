"""grrl_teleop: teleop relay with retry-keyframe labelling and the per-episode recorder (to be filled by the teleop issue)."""
