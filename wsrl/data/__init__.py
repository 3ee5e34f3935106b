"""Offline datasets, the replay buffer and rollout collection."""
