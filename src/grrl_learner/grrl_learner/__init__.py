"""grrl_learner: progress critic, filtering, mirroring, BC, online noise-space RL.

Filled by the learner issues.
"""
