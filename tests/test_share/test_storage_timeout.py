"""A hung object store is reported within seconds, and bad remote command lines change nothing.

The hung server is a loopback socket that accepts connections and never answers: what a stalled S3
endpoint or a dead proxy looks like to a client. Without kdcache's timeout, botocore and s3fs
retried it for about seven minutes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from kdcache.cache import timeouts
from kdcache.errors import ConfigError
from tests.test_share.conftest import BUCKET, run_cli, s3_listing, upload


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT of a server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:  # the 0.2 s poll, or the socket closed
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


@pytest.fixture
def hung_s3(hung_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* pointing at the hung server; the timeout variable restored after the test."""
    env = {
        "AWS_ENDPOINT_URL": hung_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "KDCACHE_REMOTE_CACHE_DIR": "off",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # recorded, so that the value --storage-timeout writes is undone after the test
    monkeypatch.delenv(timeouts.STORAGE_TIMEOUT_ENV, raising=False)
    return hung_endpoint


@pytest.mark.parametrize("command", ["info", "verify", "ls"])
def test_a_hung_s3_server_is_reported_after_the_timeout(hung_s3, command):
    code, output = run_cli([command, "s3://bucket/cache", "--storage-timeout", "1"])
    assert code == 1
    assert "did not answer within 1 s" in output and "--storage-timeout" in output
    assert "Traceback" not in output


def test_the_timeout_can_come_from_the_environment(hung_s3, monkeypatch):
    monkeypatch.setenv(timeouts.STORAGE_TIMEOUT_ENV, "1.5")
    code, output = run_cli(["info", "s3://bucket/cache"])
    assert code == 1 and "did not answer within 1.5 s" in output


def test_a_hung_http_server_is_a_timeout_not_a_missing_archive(hung_s3):
    code, output = run_cli(["info", f"{hung_s3}/cache.zip", "--storage-timeout", "1"])
    assert code == 1
    assert "did not answer within 1 s" in output and "no cache archive" not in output


def test_a_bad_timeout_is_refused(monkeypatch):
    monkeypatch.setenv(timeouts.STORAGE_TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match="KDCACHE_STORAGE_TIMEOUT must be a number of seconds"):
        timeouts.storage_timeout()
    code, output = run_cli(["info", "s3://bucket/cache"])
    assert code == 1 and "KDCACHE_STORAGE_TIMEOUT must be" in output
    monkeypatch.delenv(timeouts.STORAGE_TIMEOUT_ENV)
    for value in ("0", "-1", "nan", "1e9"):
        code, output = run_cli(["ls", "s3://bucket/cache", "--storage-timeout", value])
        assert code == 2 and "--storage-timeout" in output, value


def test_the_default_is_seconds_to_a_minute(monkeypatch):
    monkeypatch.delenv(timeouts.STORAGE_TIMEOUT_ENV, raising=False)
    assert 1 <= timeouts.storage_timeout() <= 60
    config = timeouts.filesystem_options("s3")["config_kwargs"]
    assert config["read_timeout"] == config["connect_timeout"] == timeouts.storage_timeout()


# The kinds the local fuzz test (tests/test_cli_fuzz.py) cannot reach: bucket and prefix URLs.
REMOTE_CASES = [
    ["ls", "{prefix}", "--depth", "-1"],
    ["info", "s3://nowhere-bucket/c"],
    ["verify", "{prefix}/nothing", "--replay", "0"],
    ["verify", "{prefix}", "--replay", "-5"],
    ["pack", "{prefix}", "s3://kd-team/out.zip"],
    ["train", "--cache", "{prefix}/nothing", "--student", "resnet8", "--out", "{tmp}/run"],
    [
        "extract",
        "--teacher",
        "resnet8",
        "--weights",
        "{weights}",
        "--dataset",
        "digits",
        "--out",
        f"s3://{BUCKET}",
    ],  # fmt: skip
]


@pytest.mark.parametrize("case", REMOTE_CASES, ids=lambda c: " ".join(c)[:60])
def test_a_bad_remote_command_line_fails_clearly_and_changes_no_object(
    digits_cache, digits_teacher_weights, prefix, tmp_path, monkeypatch, case
):
    monkeypatch.chdir(tmp_path)
    upload(digits_cache, prefix)
    before = s3_listing(prefix)
    args = [a.format(prefix=prefix, tmp=tmp_path, weights=digits_teacher_weights) for a in case]
    code, output = run_cli(args)
    assert code != 0, output
    assert "Traceback" not in output and ("Error" in output or "FAIL" in output)
    assert "bug in kdcache" not in output, output
    assert s3_listing(prefix) == before
    # no file written locally (`train` makes its empty run folder before it opens the cache)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
