"""grrl_sim: MuJoCo bimanual robot behind the real robot's topics (to be filled by the sim issue)."""
