"""grrl_policy: the flow-matching VLA and the deployment chunk smoother.

ROS-free cores: ``model`` (encoder + action DiT + noise predictor), ``small_encoder`` and
``vlm_encoder`` (the two observation encoders), ``checkpoint`` (safetensors + JSON),
``normalization`` and ``smoother`` (blend, QP, guard, watchdog). Nodes come with deployment.
"""
