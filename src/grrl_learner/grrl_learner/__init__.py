"""grrl_learner: progress critic, filtering, mirroring, BC and online noise-space RL (to be filled by the learner issues)."""
