"""Exceptions raised at the library's boundaries.

Every error a user can cause is a ``ValueError`` subclass whose message says what was
expected, what came, and where (market, column, date, key or file).
"""

from __future__ import annotations


class SupsupError(ValueError):
    """Base class of every user-facing error in supsup-fin."""


class ConfigError(SupsupError):
    """A configuration file or value is invalid (the message names the key path)."""


class DataError(SupsupError):
    """Market data is missing, malformed or fails a health check set to ``error``."""


class MaskFileError(SupsupError):
    """A mask bank on disk is corrupted, of another format, or built on another base network."""


class RegistryError(SupsupError):
    """The model registry does not hold what was asked for (no champion, unknown version...)."""
