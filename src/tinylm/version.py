"""tinylm's version: the one place it is written (pyproject.toml reads it; checkpoints and exports record it)."""
__version__ = "0.1.0"
