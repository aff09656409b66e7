"""grrl_policy: flow-matching VLA, inference and the deployment chunk smoother (to be filled by the policy and deployment issues)."""
