"""Presets (data): shipped inside the package as ``wsrl.configs``."""
