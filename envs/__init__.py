"""Environment suite specs (data): shipped inside the package as ``wsrl.env_specs``."""
