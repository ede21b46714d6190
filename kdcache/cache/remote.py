"""Caches behind URLs: fsspec filesystems, credentials, and errors that say what to do.

Everything here speaks fsspec and plain files; nothing imports zarr (that is ``zarr_stores.py``,
``chunk_copies.py``, ``reader.py`` and ``writer.py``). Locations arrive parsed
(:class:`kdcache.cache.location.CacheLocation`); a *remote* one is any fsspec URL other than
``file://``: ``s3://bucket/prefix`` (s3fs), ``gs://`` (gcsfs), ``http(s)://`` (read-only), or a
chained URL (``simplecache::s3://...``).

Credentials are never handled by kdcache: s3fs asks botocore, which reads the environment the way
the AWS CLI does (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and ``~/.aws``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for S3-compatible
servers). Filesystems are reused only while that environment is unchanged (fsspec's own instance
cache would hand back a client built with older credentials), and keep no listings cache (another
process may have written since).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from kdcache.cache import timeouts
from kdcache.cache.location import CacheLocation
from kdcache.errors import ConfigError, DataNotFoundError, KdcacheError

log = logging.getLogger(__name__)

REMOTE_CACHE_ENV = "KDCACHE_REMOTE_CACHE_DIR"
# Values of KDCACHE_REMOTE_CACHE_DIR (or cache_dir=) that turn local copies off.
_OFF = frozenset({"off", "none", "0", "false"})
_INSTALL_HINT = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}
# Transport failures, named so that botocore / aiohttp need not be imported to recognise them.
_UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
    }
)


class StorageAccessError(KdcacheError, PermissionError):
    """The storage service refused the request: wrong, missing or insufficient credentials."""


class StorageUnavailableError(KdcacheError, ConnectionError):
    """The storage service cannot be reached (endpoint, network)."""


# Environment variables that configure fsspec backends and their credentials.
_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "GCSFS_", "AZURE_", timeouts.STORAGE_TIMEOUT_ENV)
_FILESYSTEMS: dict[tuple[object, ...], tuple[Any, str]] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    global _FILESYSTEMS_LOCK  # a fork while another thread held the lock must not deadlock
    _FILESYSTEMS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))


def filesystem(location: CacheLocation, *, asynchronous: bool = False) -> tuple[Any, str]:
    """The fsspec filesystem for ``location`` and the path inside it.

    Instances live as long as the process, one per (location, mode, process, credential
    environment): a changed AWS_* variable gets a new client, and unchanged ones reuse their
    connections. Instances are never dropped: an async client collected before its session is
    closed prints "Unclosed client session"; :mod:`kdcache.cache.zarr_stores` closes them at exit
    instead.
    """
    import fsspec

    url = location.url
    key = (url, asynchronous, os.getpid(), _environment())
    with _FILESYSTEMS_LOCK:
        found = _FILESYSTEMS.get(key)
        if found is None:
            options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
            if asynchronous:
                options["asynchronous"] = True
            if not location.is_chained:  # chained URLs: options would go to the outer layer
                options.update(timeouts.filesystem_options(location.protocol))
            try:
                found = fsspec.url_to_fs(url, **options)
            except ImportError as exc:
                raise missing_backend_error(location, exc) from exc
            except Exception as exc:  # an unknown scheme; a backend that connects at once (ftp)
                raise filesystem_error(location, exc) from exc
            timeouts.limit_retries(found[0])
            _FILESYSTEMS[key] = found
    return found


def async_filesystems() -> list[Any]:
    """The asynchronous filesystems this process created (for closing their sessions at exit)."""
    pid = os.getpid()
    return [fs for key, (fs, _) in list(_FILESYSTEMS.items()) if key[1] and key[2] == pid]


def filesystem_error(location: CacheLocation, exc: Exception) -> KdcacheError:
    """Why no filesystem could be made for ``location``: an unknown scheme, or unreachable."""
    if isinstance(exc, ValueError) and "protocol" in str(exc).lower():
        return ConfigError(
            f"{location}: unknown URL scheme {location.protocol!r} ({exc}). A cache location is "
            "a directory, a .zip file or an fsspec URL (s3://bucket/prefix, gs://, az://, "
            "http(s)://, file://)"
        )
    translated = translate_error(exc, location)
    if translated is not None:
        return translated
    return ConfigError(f"{location}: cannot open this location ({type(exc).__name__}: {exc})")


def missing_backend_error(location: CacheLocation, exc: BaseException) -> ConfigError:
    package = _INSTALL_HINT.get(location.protocol, "the fsspec backend for this protocol")
    extra = " (pip install 'kdcache[s3]')" if package == "s3fs" else ""
    return ConfigError(f"{location} needs {package}, which is not installed{extra}: {exc}")


def credentials_hint(location: CacheLocation) -> str:
    proto = location.protocol
    if proto in ("s3", "s3a"):
        return (
            "kdcache reads S3 credentials as the AWS CLI does: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE / "
            "~/.aws/credentials; an S3-compatible server is named by AWS_ENDPOINT_URL_S3 or "
            "AWS_ENDPOINT_URL. Check that they are set and allow this bucket."
        )
    if proto in ("gs", "gcs"):
        return "gcsfs reads GOOGLE_APPLICATION_CREDENTIALS or the gcloud default credentials."
    return "check the credentials your fsspec backend reads for this URL."


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def translate_error(exc: BaseException, location: CacheLocation) -> KdcacheError | None:
    """A user-facing error for a storage failure, or None when ``exc`` is not one."""
    if isinstance(exc, KdcacheError):
        return exc
    names = _class_names(exc)
    status = getattr(exc, "status", None)  # aiohttp's ClientResponseError (http://)
    if (isinstance(exc, PermissionError) and location.is_remote) or status in (401, 403):
        return StorageAccessError(
            f"{location}: the storage service denied access ({exc}). {credentials_hint(location)}"
        )
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return StorageAccessError(
            f"{location}: no credentials were found ({exc}). {credentials_hint(location)}"
        )
    if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        return _missing_bucket(location)
    if "timeout" in " ".join(names).lower() or isinstance(exc, TimeoutError):
        return StorageUnavailableError(
            f"the storage service for {location} did not answer within "
            f"{timeouts.storage_timeout():g} s ({exc}). Check the network and the endpoint; a "
            f"slow link may need a longer --storage-timeout (env {timeouts.STORAGE_TIMEOUT_ENV})."
        )
    if names & _UNREACHABLE or isinstance(exc, ConnectionError):
        return StorageUnavailableError(
            f"cannot reach the storage service for {location} ({exc}). Check the network and, for "
            "an S3-compatible server, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."
        )
    return None


def _missing_bucket(location: CacheLocation) -> DataNotFoundError:
    return DataNotFoundError(
        f"bucket {location.bucket!r} does not exist ({location}): check the URL (and "
        "AWS_ENDPOINT_URL for S3-compatible servers), or create the bucket first"
    )


def check_bucket(location: CacheLocation) -> None:
    """Raise a clear error unless the URL's bucket exists and the credentials may use it."""
    bucket = location.bucket
    if bucket is None:
        return
    fs, _ = filesystem(location)
    try:
        fs.info(bucket)
    except FileNotFoundError as exc:
        raise _missing_bucket(location) from exc
    except Exception as exc:
        err = translate_error(exc, location)
        if err is None:
            raise
        raise err from exc


def missing_cache_error(location: CacheLocation) -> KdcacheError:
    """Why there is no cache at a remote ``location``: no bucket, no access, or no cache there."""
    from kdcache.cache import layout  # imports zarr: not at the top (the CLI imports this module)

    try:
        check_bucket(location)
    except KdcacheError as exc:
        return exc
    return DataNotFoundError(
        f"no kdcache cache at {location} (no {layout.METADATA_FILE} under it): check the URL, "
        f"or create one with `kdcache extract --out {location}`"
    )


def holds_objects(location: CacheLocation) -> bool:
    """Whether anything is stored under ``location`` (a directory's files, a prefix's objects)."""
    fs, path = filesystem(location)
    try:
        return bool(fs.ls(path, detail=False))
    except FileNotFoundError:
        return False
    except Exception as exc:
        err = translate_error(exc, location)
        if err is None:
            raise
        raise err from exc


def stored_size(location: CacheLocation) -> int:
    """Total bytes of every object under ``location`` (one listing, no downloads)."""
    fs, path = filesystem(location)
    return int(fs.du(path, total=True))


def local_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Where local copies of remote chunks live: ``cache_dir``, else $KDCACHE_REMOTE_CACHE_DIR,
    else ``$XDG_CACHE_HOME/kdcache/remote`` (``~/.cache/kdcache/remote``); None when set to off."""
    value = os.fspath(cache_dir) if cache_dir is not None else os.environ.get(REMOTE_CACHE_ENV)
    if value is not None and value.strip().lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "kdcache" / "remote"


def namespace(location: CacheLocation, fingerprint: str, created: str) -> str:
    """The local sub-directory for one extraction of one cache at one URL.

    URL + fingerprint + creation time: a cache deleted and re-extracted at the same URL (even with
    the same settings, on another device) never reuses the old copies.
    """
    # The location as typed (not normalised): the directories of copies made so far stay valid.
    digest = hashlib.sha256(f"{location.raw}\n{fingerprint}\n{created}".encode()).hexdigest()
    return f"{fingerprint[:12]}-{digest[:16]}"


def fetch_archive(location: CacheLocation, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local copy of a remote ``.zip`` cache, downloaded once per (URL, ETag, size).

    A packed cache is one object: fetching it whole is one request, and every later open (this
    process or another) reads the local file. Without a local cache directory (set to off) the
    copy goes to a temporary directory that lives until the process exits.
    """
    fs, path = filesystem(location)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        # fsspec's http reports any failure of its HEAD/GET as "not found": a timeout or a refused
        # connection is its cause, and must not be reported as a missing archive.
        transport = translate_error(exc.__cause__, location) if exc.__cause__ else None
        if transport is not None:
            raise transport from exc
        if location.bucket is not None:
            check_bucket(location)
        raise DataNotFoundError(f"no cache archive at {location}") from exc
    except Exception as exc:
        err = translate_error(exc, location)
        if err is None:
            raise
        raise err from exc
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or ""
    key = hashlib.sha256(f"{location.raw}\n{version}\n{info.get('size')}".encode()).hexdigest()[:24]
    root = local_cache_root(cache_dir)
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="kdcache-archive-"))
    target = root / "archives" / f"{key}.zip"
    if target.is_file() and target.stat().st_size == info.get("size", target.stat().st_size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{key}.", suffix=".part")
    os.close(fd)
    log.info("downloading %s (%s bytes) to %s", location, info.get("size"), target)
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        err = translate_error(exc, location) if isinstance(exc, Exception) else None
        if err is not None:
            raise err from exc
        raise
    return target
