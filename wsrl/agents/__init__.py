"""One module per algorithm; each is a set of losses and an ``update(batch)`` over ``ActorCritic``."""

from wsrl.agents.cql import CQL, CalQL
from wsrl.agents.iql import IQL
from wsrl.agents.sac import SAC

AGENTS = {"sac": SAC, "cql": CQL, "calql": CalQL, "iql": IQL}

__all__ = ["AGENTS", "SAC", "CQL", "CalQL", "IQL"]
