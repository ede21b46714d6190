"""How long kdcache waits for an object store before it gives up with a clear error.

Left to themselves, botocore and s3fs retry a server that accepts connections but never answers
for about seven minutes (60 s read timeouts, several attempts, at two levels). kdcache bounds every
request instead: a request with no answer within the timeout fails (botocore still retries
throttling and refused connections once; s3fs's own retry loop, which would repeat timeouts, is
off), and the operation fails with :class:`kdcache.cache.remote.StorageUnavailableError`. One
operation makes one to three requests, so a hung server is reported within about three timeouts.

The timeout is ``KDCACHE_STORAGE_TIMEOUT`` (seconds, default 10); the CLI's ``--storage-timeout``
sets that variable, so that DataLoader workers and torchrun ranks inherit it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from kdcache.errors import ConfigError

STORAGE_TIMEOUT_ENV = "KDCACHE_STORAGE_TIMEOUT"
DEFAULT_STORAGE_TIMEOUT_S = 10.0
MAX_STORAGE_TIMEOUT_S = 3600.0
# Attempts per request at the client (botocore) level, for throttling and refused connections
# (botocore's standard mode does not repeat a read timeout); s3fs's own loop is turned off.
_ATTEMPTS = 2


def parse_timeout(raw: str | float, source: str = STORAGE_TIMEOUT_ENV) -> float:
    """Seconds in (0, 3600]; a ConfigError naming ``source`` otherwise."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= MAX_STORAGE_TIMEOUT_S:  # also refuses NaN
        raise ConfigError(
            f"{source} must be a number of seconds in (0, {MAX_STORAGE_TIMEOUT_S:g}], got {raw!r}"
        )
    return value


def storage_timeout() -> float:
    """The per-request timeout in seconds: $KDCACHE_STORAGE_TIMEOUT, else the default."""
    raw = os.environ.get(STORAGE_TIMEOUT_ENV, "").strip()
    return parse_timeout(raw) if raw else DEFAULT_STORAGE_TIMEOUT_S


def filesystem_options(protocol: str) -> dict[str, Any]:
    """fsspec keyword arguments that bound a request's wait for ``protocol`` (empty: unknown)."""
    seconds = storage_timeout()
    if protocol in ("s3", "s3a"):
        return {
            "config_kwargs": {
                "connect_timeout": seconds,
                "read_timeout": seconds,
                "retries": {"max_attempts": _ATTEMPTS, "mode": "standard"},
            }
        }
    if protocol in ("http", "https"):
        import aiohttp

        return {
            "client_kwargs": {
                "timeout": aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
            }
        }
    return {}


def limit_retries(fs: Any) -> None:
    """Turn off s3fs's retry loop (botocore retries once already, see ``filesystem_options``)."""
    if type(fs).__name__ == "S3FileSystem":
        fs.retries = 1
