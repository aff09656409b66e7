"""grrl_learner: progress critic, filtering, mirroring, BC, online noise-space RL.

ROS-free cores (episodes, datasets, BC training, sim evaluation, ...) plus thin nodes.
"""

# Episode seeds: demos are collected from small seeds, periodic validation during training and
# final evaluation start far above them, so no evaluated scene was ever demonstrated.
VALIDATION_SEED = 500_000
HELD_OUT_SEED = 1_000_000

# Control steps between policy calls wherever the sim core runs a policy (evaluation, online
# RL), as policy_node's chunk_period_s does on the robot. A chunk every step with ACT's
# ensembling re-reads the scene at the control rate: on the same 500 scenes, clean + mirror BC
# succeeds 0.69 that way against 0.58 with a chunk every 5 steps (docs/BENCHMARKS.md).
REPLAN_EVERY = 1

# Offline critic kinds (grrl_learner.critic) and the filter's default progress drop δ
# (grrl_learner.progress_filter), here so that the CLI's parser needs no torch: importing it
# costs seconds at start-up and at exit for every `grrl` command, `grrl up` included.
CRITIC_KINDS = ("distributional", "regression", "scalar_td")
DEFAULT_DELTA = 0.05

# Stillness tolerance of a pause transition (grrl_learner.dataset.idle_transitions), as a
# fraction of each joint's range: ~0.01 rad on a ViperX arm joint, 0.1 mm on its gripper.
DEFAULT_IDLE_TOLERANCE = 0.003
