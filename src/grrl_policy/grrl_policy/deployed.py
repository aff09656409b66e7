"""The policy as deployed: its noise predictor's ε for checkpoints published by online RL.

Online RL (``grrl_learner.online``) trains only the noise-predictor head π_θ' and publishes the
policy with ``meta["noise"] == "predictor"``; every place that runs a policy (policy_node's
inference worker, ``grrl eval``, the online rollout loop) wraps what it loads with
:func:`deployed`, so such a checkpoint samples from π_θ'(o) (+ optional exploration) and any
other from N(0, I).
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

    ``act(..., noise=z)`` uses ε = π_θ'(o) + ``explore_std``·z (z ~ N(0, I) drawn here when not
    given) and returns that ε as the noise used, so callers that pass Gaussian draws (the sim
    evaluator, the rollout loop) get predictor noise with optional exploration.
    """

    explore_std: float = 0.0

    @classmethod
    def wrap(cls, policy: LoadedPolicy, explore_std: float = 0.0) -> NoisePredictorPolicy:
        return cls(policy.model, policy.norm, policy.joint_names, policy.control_dt,
                   policy.meta, explore_std)  # fmt: skip

    @torch.no_grad()
    def predicted_noise(
        self, states: np.ndarray, instructions: list[str], images: np.ndarray | None = None
    ) -> torch.Tensor:
        """π_θ'(o): (B, k, n) on the policy's device."""
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
        if self.explore_std > 0:
            if noise is None:
                noise = torch.randn(tuple(eps.shape), generator=generator)
            eps = eps + self.explore_std * noise.to(eps)
        return super().act(states, instructions, images, noise=eps, **guide)


def uses_noise_predictor(policy: LoadedPolicy) -> bool:
    """Whether a checkpoint was published by online RL (sample from its noise predictor)."""
    return policy.meta.get(NOISE_META) == "predictor"


def deployed(policy: LoadedPolicy, explore_std: float = 0.0) -> LoadedPolicy:
    """The policy as it is run: its noise predictor's ε for online-RL checkpoints, else N(0, I)."""
    if uses_noise_predictor(policy):
        return NoisePredictorPolicy.wrap(policy, explore_std)
    return policy
