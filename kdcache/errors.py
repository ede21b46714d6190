"""Typed errors: what the user sees.

Every error kdcache raises on purpose derives from :class:`KdcacheError`; the CLI turns those into a
clean message and a non-zero exit. Each also inherits the matching builtin so that library
callers can catch ``ValueError`` / ``FileNotFoundError`` as usual (the zarr-python convention).
"""

from __future__ import annotations


class KdcacheError(Exception):
    """Base class of every error meant for the user."""


class ConfigError(KdcacheError, ValueError):
    """An option or hyper-parameter is invalid; the message names it and the allowed range."""


class DataNotFoundError(KdcacheError, FileNotFoundError):
    """A dataset, weights file or cache is missing where the user pointed."""


class UnknownNameError(KdcacheError, KeyError):
    """An unknown model, dataset, recipe or loss name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class WeightsError(KdcacheError, ValueError):
    """Weights that do not fit the architecture (missing / unexpected / mis-shaped keys)."""


class CacheError(KdcacheError, ValueError):
    """A cache is malformed, incomplete, or belongs to other settings."""


class CacheCorruptError(CacheError):
    """Stored bytes fail their checksum, or hold NaN/Inf where logits should be."""


class CacheMismatchError(CacheError):
    """A cache does not match what the caller has (other dataset, settings, class count...)."""


class FormatVersionError(CacheError):
    """A cache written by a newer, incompatible format version."""


class ReplayMismatchError(KdcacheError, RuntimeError):
    """A regenerated augmented image does not hash to what the cache recorded."""


class CorruptImageError(KdcacheError, OSError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); names the file.

    A DataLoader worker's exception reaches the main process re-built from the worker's whole
    traceback text (``Caught ... in DataLoader worker process 0. Original Traceback ...``); the
    user sees only its last line, the message raised in the worker.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)

    def __str__(self) -> str:  # OSError would format a 1-tuple of args; keep the plain message
        return str(self.args[0]) if self.args else ""


class NonFiniteError(KdcacheError, FloatingPointError):
    """Training met NaN/Inf (teacher logits, loss or weights); nothing further was written."""
