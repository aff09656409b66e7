"""grrl_sim: MuJoCo bimanual robot behind the real robot's topics.

Filled by the sim issue.
"""
