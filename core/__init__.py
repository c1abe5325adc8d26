"""nsa: offline policy optimisation with negative sample augmentation (BCPG-NSA)."""

__version__ = "0.1.0"
