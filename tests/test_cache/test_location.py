"""A cache location is classified once, the same way for every kind a user may give."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcache.cache.location import CacheLocation, parse_location
from kdcache.errors import ConfigError

HOME = Path.home()


@pytest.mark.parametrize(
    "given, protocol, remote, is_zip, bucket, key_prefix, path",
    [
        ("caches/r56", "file", False, False, None, "", Path("caches/r56")),
        ("caches/r56/", "file", False, False, None, "", Path("caches/r56")),
        ("/data/r56.zip", "file", False, True, None, "", Path("/data/r56.zip")),
        ("/data/r56.zip/", "file", False, True, None, "", Path("/data/r56.zip")),
        ("~/caches/r56", "file", False, False, None, "", HOME / "caches/r56"),
        ("file:///data/r56", "file", False, False, None, "", Path("/data/r56")),
        ("file://~/r56.zip", "file", False, True, None, "", HOME / "r56.zip"),
        ("s3://team/caches/r56", "s3", True, False, "team", "caches/r56", None),
        ("s3://team/caches/r56/", "s3", True, False, "team", "caches/r56", None),
        ("s3://team", "s3", True, False, "team", "", None),
        ("s3://team/r56.zip", "s3", True, True, "team", "r56.zip", None),
        ("gs://team/r56", "gs", True, False, "team", "r56", None),
        ("az://box/deep/r56/", "az", True, False, "box", "deep/r56", None),
        ("http://host:8000/r56", "http", True, False, None, "", None),
        ("https://host/caches/r56.zip", "https", True, True, None, "", None),
        ("simplecache::s3://team/r56", "s3", True, False, "team", "r56", None),
    ],
)  # fmt: skip
def test_every_kind_of_location_is_classified_once(
    given: str,
    protocol: str,
    remote: bool,
    is_zip: bool,
    bucket: str | None,
    key_prefix: str,
    path: Path | None,
) -> None:
    where = parse_location(given)
    assert (where.protocol, where.is_remote, where.is_zip) == (protocol, remote, is_zip)
    assert (where.bucket, where.key_prefix, where.path) == (bucket, key_prefix, path)
    assert where.raw == str(where) == given  # messages show what the user typed
    assert where.is_http == (protocol in ("http", "https"))
    assert where.is_chained == given.startswith("simplecache::")
    if remote:
        assert where.url == given.rstrip("/")  # what fsspec is given: no trailing slash
    else:
        assert where.url == str(path)


def test_a_path_object_and_a_parsed_value_are_accepted_as_they_are(tmp_path: Path) -> None:
    from_path = parse_location(tmp_path / "c.zip")
    assert from_path.path == tmp_path / "c.zip" and from_path.is_zip
    assert parse_location(from_path) is from_path


def test_the_parsed_value_is_frozen() -> None:
    where = parse_location("s3://team/r56")
    with pytest.raises(AttributeError):
        where.bucket = "other"  # type: ignore[misc]
    assert isinstance(where, CacheLocation)


@pytest.mark.parametrize("given", ["", "   "])
def test_an_empty_location_is_refused_with_what_to_give(given: str) -> None:
    with pytest.raises(ConfigError, match="location is empty: give a directory"):
        parse_location(given)


@pytest.mark.parametrize(
    "out, message",
    [
        ("{tmp}/cache.zip", "a .zip cache is read-only"),
        ("https://host/cache", "http(s) locations are read-only"),
        ("s3://team", "write a cache under a prefix of the bucket, e.g. s3://team/my-cache"),
    ],
)
def test_extract_refuses_a_read_only_kind_of_out_before_loading_anything(
    out: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdcache.extract
    from kdcache.extract import ExtractConfig, run_extract

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was loaded before the location was checked")

    monkeypatch.setattr(kdcache.extract, "load_dataset", must_not_load)
    config = ExtractConfig(
        teacher="resnet8", out=out.format(tmp=tmp_path), dataset="digits", weights="w.pth"
    )
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_extract(config)
