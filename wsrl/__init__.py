"""wsrl: Warm-Start RL, offline-to-online reinforcement learning in PyTorch."""

__version__ = "0.1.0"
