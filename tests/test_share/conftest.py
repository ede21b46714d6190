"""A real S3-compatible server on loopback (moto's standalone server) with IAM auth turned on.

The server runs in this process on 127.0.0.1 and checks every request's signature against an IAM
user created at start-up, so wrong credentials fail as they would on AWS. kdcache is given the
credentials the way users give them: AWS_* environment variables.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

BUCKET = "kd-team"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str

    def env(self) -> dict[str, str]:
        """The environment a user sets to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups on bad creds
        }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here talks to a moto S3 server or a loopback HTTP server: integration tests,
    slow as a group (about 3 minutes on 2 cores). The quick loop (`-m "not slow"`) skips them;
    the full suite (CI) runs them."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    requests = pytest.importorskip("requests")
    pytest.importorskip("s3fs")

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "admin",
        "aws_secret_access_key": "admin",
    }
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="kdcache-tests")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="kdcache-tests", PolicyName="s3", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="kdcache-tests")["AccessKey"]
    boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
    # From now on every request must be signed by a known IAM user.
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The server's credentials in the environment, and local chunk copies under tmp_path."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("KDCACHE_REMOTE_CACHE_DIR", str(tmp_path / "chunk-copies"))
    return s3_server


@pytest.fixture
def prefix(s3: S3Server) -> str:
    """A fresh, empty prefix in the test bucket: s3://kd-team/<random>."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def s3fs_client():  # type: ignore[no-untyped-def]
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def upload(local: Path, url: str) -> None:
    """Copy a local cache directory to an s3:// prefix, object for object."""
    root = url.removeprefix("s3://")
    objects = {
        f"{root}/{path.relative_to(local)}": path.read_bytes()
        for path in sorted(local.rglob("*"))
        if path.is_file()
    }
    s3fs_client().pipe(objects)  # concurrent puts


def s3_objects(url: str) -> dict[str, bytes]:
    """Every object under an s3:// prefix, by key relative to it."""
    fs = s3fs_client()
    root = url.removeprefix("s3://").rstrip("/")
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in sorted(fs.find(root))}


def s3_listing(url: str) -> dict[str, tuple[str, int]]:
    """Key -> (ETag, size) of every object under an s3:// prefix: what a writer would change."""
    fs = s3fs_client()
    root = url.removeprefix("s3://").rstrip("/")
    return {k: (v["ETag"], v["size"]) for k, v in fs.find(root, detail=True).items()}


def put_object(url: str, data: bytes) -> None:
    s3fs_client().pipe_file(url.removeprefix("s3://"), data)


def run_cli(args: list[str]) -> tuple[int, str]:
    from kdcache.cli import main

    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def chunk_bytes(objects: dict[str, bytes]) -> dict[str, bytes]:
    """The chunk objects of a cache (metadata documents left out: they hold creation times)."""
    return {k: v for k, v in objects.items() if not k.endswith("zarr.json")}
