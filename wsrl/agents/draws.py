"""Every random number an update draws, named by its role.

The agents never call torch's random functions themselves: each draw goes through the agent's
``Draws``, with the role it plays (``"td_next"``: the policy noise of a' ~ pi(s') in the TD
target, ``"cql_members"``: the critics the CQL penalty applies to, ...). The defaults draw from
torch's global generator, so seeding torch seeds the update. Another ``Draws`` changes where the
numbers come from without touching the losses: the release's update (release_update.py) draws
members with replacement, and scripts/parity_release.py replays the release's own arrays, role by
role. Everything here is a plain method call, which torch.compile inlines and a CUDA graph
captures like the torch call it wraps.
"""

from __future__ import annotations

from typing import Callable

import torch

Noise = Callable[[torch.Tensor], torch.Tensor]
"""A function from a policy's mean to the standard normal noise of its sample (same shape)."""

ROLES = ("td_next", "td_members", "actor_pi", "temperature_next", "cql_uniform", "cql_pi", "cql_next_pi",
         "cql_members")
"""The roles of the SAC-family updates. The CQL roles also come with the family ``alpha`` in place
of ``cql`` (the release's update recomputes the penalty for the Lagrange loss with fresh draws)."""


class Draws:
    def normal(self, role: str) -> Noise:
        """The noise of a reparameterised policy sample (the ``noise`` of ``Actor.sample``)."""
        return torch.randn_like

    def uniform(self, role: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Uniform numbers in [0, 1)."""
        return torch.rand(*shape, device=device)

    def members(self, role: str, ensemble_size: int, k: int, device: torch.device) -> torch.Tensor | None:
        """k distinct members of the ensemble, uniformly (None = all of them, nothing drawn). argsort
        of uniforms rather than randperm: it stays on the device and is safe inside a CUDA graph."""
        if k == ensemble_size:
            return None
        return torch.rand(ensemble_size, device=device).argsort()[:k]

    def penalty_members(self, role: str, ensemble_size: int, k: int, device: torch.device) -> torch.Tensor | None:
        """The members the CQL penalty applies to: all of them (None), nothing drawn."""
        return None
