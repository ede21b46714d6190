"""The labels array is covered by a digest (format 1.3), and the identity is hashed as stored.

docs/cache-format.md §4 (``labels_sha256``) and §4.1/§4.3 (the identity's canonical form).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from kdcache.cache import schema
from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.errors import CacheCorruptError, CacheError


def cli(args: list[object]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def edit_attrs(root: Path, edit) -> None:  # noqa: ANN001
    doc = json.loads((root / "zarr.json").read_text())
    edit(doc["attributes"]["kdcache"])
    (root / "zarr.json").write_text(json.dumps(doc))


@pytest.fixture
def copy(digits_cache: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(digits_cache, out)
    return out


def test_a_new_cache_records_its_labels_digest(digits_cache: Path) -> None:
    attrs = json.loads((digits_cache / "zarr.json").read_text())["attributes"]["kdcache"]
    labels = np.asarray(zarr.open_array(str(digits_cache / "labels"), mode="r")[:])
    assert attrs["format_version"] == schema.FORMAT_VERSION == "1.3"
    expected = __import__("hashlib").sha256(labels.astype("<i8").tobytes()).hexdigest()
    assert attrs["labels_sha256"] == expected
    assert np.array_equal(open_cache(digits_cache).labels(), labels)


def _delete(root: Path) -> None:
    (root / "labels" / "c" / "0").unlink()


def _truncate(root: Path) -> None:
    chunk = root / "labels" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])


def _flip(root: Path) -> None:
    array = zarr.open_array(str(root / "labels"), mode="r+")
    array[:3] = (np.asarray(array[:3]) + 1) % 10  # valid labels, valid chunk: only the digest


def _empty(root: Path) -> None:
    (root / "labels" / "c" / "0").write_bytes(b"")


@pytest.mark.parametrize("damage", [_delete, _truncate, _flip, _empty])
def test_verify_fails_a_damaged_labels_array(copy: Path, damage) -> None:  # noqa: ANN001
    damage(copy)
    code, output = cli(["verify", copy, "--replay", "0"])
    assert code == 1, output
    assert "[FAIL] labels" in output and "Traceback" not in output
    with pytest.raises(CacheCorruptError, match="labels"):
        open_cache(copy).labels()


def _as_format_1_2(root: Path) -> None:
    def edit(attrs: dict) -> None:
        attrs["format_version"] = "1.2"
        del attrs["labels_sha256"]  # outside the identity: the fingerprint is unchanged

    edit_attrs(root, edit)


def test_an_older_cache_reports_its_labels_unchecked_without_the_data(copy: Path) -> None:
    _as_format_1_2(copy)
    _flip(copy)
    code, output = cli(["verify", copy, "--replay", "0"])
    assert code == 0, output
    assert "[skipped] labels: unchecked" in output and "labels skipped" in output


def test_an_older_cache_s_labels_are_checked_against_the_data(copy: Path) -> None:
    _as_format_1_2(copy)
    code, output = cli(["verify", copy, "--replay", "4"])  # digits is bundled: the data is here
    assert code == 0 and "[ok] labels: the cache's labels equal the data's" in output, output
    _flip(copy)
    code, output = cli(["verify", copy, "--replay", "4"])
    assert code == 1 and "[FAIL] labels" in output, output


def test_a_1_3_cache_without_its_labels_digest_is_refused(copy: Path) -> None:
    edit_attrs(copy, lambda attrs: attrs.pop("labels_sha256"))
    with pytest.raises(CacheError, match="labels_sha256"):
        open_cache(copy)


# --- §4.1: the identity is hashed exactly as stored, and must be in canonical form -----------


def test_an_unknown_identity_key_is_refused_not_ignored(copy: Path) -> None:
    edit_attrs(copy, lambda attrs: attrs["teacher"].update(note="hand-added"))
    with pytest.raises(CacheError, match="unexpected key teacher.note"):
        open_cache(copy)
    code, output = cli(["verify", copy, "--replay", "0"])
    assert code == 1 and "[FAIL] metadata" in output, output


def test_a_re_typed_identity_value_is_refused(copy: Path) -> None:
    # 256.0 parses to the same chunk_rows, but hashes differently from what was fingerprinted.
    edit_attrs(copy, lambda attrs: attrs["storage"].update(chunk_rows=256.0))
    with pytest.raises(CacheError, match=r"storage.chunk_rows is stored as 256.0, expected 256"):
        open_cache(copy)


def test_the_fingerprint_is_the_hash_of_the_stored_identity(digits_cache: Path) -> None:
    attrs = json.loads((digits_cache / "zarr.json").read_text())["attributes"]["kdcache"]
    stored = {key: attrs[key] for key in ("teacher", "dataset", "augmentation", "storage")}
    text = json.dumps(stored, sort_keys=True, separators=(",", ":"))
    assert __import__("hashlib").sha256(text.encode()).hexdigest() == attrs["fingerprint"]
    assert schema.identity_fingerprint(stored) == attrs["fingerprint"]


def test_nan_in_the_identity_is_refused() -> None:
    with pytest.raises(CacheError, match="Out of range float"):
        schema.canonical_json({"x": float("nan")})
