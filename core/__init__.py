"""nsa: offline policy optimisation with negative sample augmentation (BCPG-NSA)."""

# nsa's warnings, and its plugins' (loggers under "nsa"), print as one line "nsa: warning: ..."
from nsa import log as log

__version__ = "0.1.0"
