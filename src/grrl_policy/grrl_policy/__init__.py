"""grrl_policy: flow-matching VLA, inference and the deployment chunk smoother.

Filled by the policy and deployment issues.
"""
