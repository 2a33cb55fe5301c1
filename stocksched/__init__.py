"""stocksched: a declarative market-data scheduler (jobs.yaml -> Redis)."""

# A static string, not importlib.metadata (which costs tens of ms on every command):
# pyproject.toml takes the distribution's version from stocksched/_version.py.
from stocksched._version import __version__

__all__ = ["__version__"]
