"""shareddb: a replicated key-value database for text."""

__version__ = "0.1.0"
