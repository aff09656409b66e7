"""grrl_learner: progress critic, filtering, mirroring, BC, online noise-space RL.

ROS-free cores (episodes, datasets, BC training, sim evaluation, ...) plus thin nodes.
"""

# Episode seeds: demos are collected from small seeds, periodic validation during training and
# final evaluation start far above them, so no evaluated scene was ever demonstrated.
VALIDATION_SEED = 500_000
HELD_OUT_SEED = 1_000_000
