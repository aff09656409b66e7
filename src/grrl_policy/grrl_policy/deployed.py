"""The policy as deployed: its noise predictor's ε for checkpoints published by online RL.

Online RL (``grrl_learner.online``) trains only the noise-predictor head π_θ' and publishes the
policy with ``meta["noise"] == "predictor"``; every place that runs a policy (policy_node's
inference worker, ``grrl eval``, the online rollout loop) wraps what it loads with
:func:`deployed`, so such a checkpoint samples ε ~ N(π_θ'(o), I) and any other ε ~ N(0, I).

The head shifts the mean of the Gaussian the expert was trained on rather than replacing it
with a point: in the k·n-dimensional noise space a single point near the origin is far from
the typical set (‖z‖ ≈ √(k·n)), and integrating from it is measurably worse (clean-data BC,
100 episodes: 0.32 success from N(0, I), 0.13 from ε = 0). Its last layer starts at zero, so
version 1 of online RL begins exactly as the offline policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from grrl_policy.checkpoint import LoadedPolicy

NOISE_META = "noise"  # checkpoint meta key: "predictor" when ε comes from the noise predictor


@dataclass
class NoisePredictorPolicy(LoadedPolicy):
    """A loaded policy that integrates from its noise predictor's ε instead of N(0, I).

    ``act(..., noise=z)`` uses ε = π_θ'(o) + z (z ~ N(0, I) drawn here when not given; a
    caller's ``noise_scale`` scales it) and returns that ε as the noise used, so callers that
    pass Gaussian draws (the sim evaluator, the rollout loop, the policy node) sample the
    online-RL policy exactly as they sample the offline one.
    """

    @classmethod
    def wrap(cls, policy: LoadedPolicy) -> NoisePredictorPolicy:
        return cls(policy.model, policy.norm, policy.joint_names, policy.control_dt,
                   policy.meta)  # fmt: skip

    @torch.no_grad()
    def predicted_noise(
        self, states: np.ndarray, instructions: list[str], images: np.ndarray | None = None
    ) -> torch.Tensor:
        """π_θ'(o), the mean of the policy's ε: (B, k, n) on the policy's device."""
        obs = self.observation(states, instructions, images)
        return self.model.predict_noise(self.model.encode(obs)).float()

    @torch.no_grad()
    def act(
        self,
        states: np.ndarray,
        instructions: list[str],
        images: np.ndarray | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **guide: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        eps = self.predicted_noise(states, instructions, images)
        if noise is None:
            noise = torch.randn(tuple(eps.shape), generator=generator)
        return super().act(states, instructions, images, noise=eps + noise.to(eps), **guide)


def uses_noise_predictor(policy: LoadedPolicy) -> bool:
    """Whether a checkpoint was published by online RL (sample from its noise predictor)."""
    return policy.meta.get(NOISE_META) == "predictor"


def deployed(policy: LoadedPolicy) -> LoadedPolicy:
    """The policy as it is run: ε ~ N(π_θ'(o), I) for online-RL checkpoints, else N(0, I)."""
    if uses_noise_predictor(policy):
        return NoisePredictorPolicy.wrap(policy)
    return policy
