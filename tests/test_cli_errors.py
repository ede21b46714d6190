"""How the CLI fails: one line and an exit status for each family of failure, nothing half-done.

Ctrl-C, a full disk, a read-only mount, a permission error, a bug, sizes the machine cannot hold,
YAML of the wrong shape, and `pack`'s handling of links and leftover temporary files.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import zarr.storage
from click.testing import CliRunner

from kdcache.cache import bounds, schema
from kdcache.cli import main
from kdcache.errors import ConfigError
from kdcache.training.config import TrainConfig
from tests.conftest import REPO

EXTRACT = "extract --teacher resnet8 --weights {weights} --dataset digits --split test --workers 0"


def cli(args: list[str]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(output: str) -> str:
    """The single ``Error: ...`` line of an output (and proof that there is exactly one)."""
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def extract(weights: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = shlex.split(EXTRACT.format(weights=weights)) + ["--out", str(out), "--no-progress"]
    return cli([*args, "--chunk-rows", "128", *extra])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, digits_teacher_weights: Path) -> Path:
    out = tmp_path_factory.mktemp("errors") / "cache"
    result = extract(digits_teacher_weights, out)
    assert result.exit_code == 0, result.output
    return out


# --- Ctrl-C and bugs ---------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_one_line(cache, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("kdcache.cache.reader.open_cache", interrupted)
    result = cli(["info", cache])
    assert result.exit_code == 130
    assert "interrupted" in error_line(result.output)
    assert "Aborted" not in result.output


@pytest.mark.slow
def test_a_real_sigint_exits_130_without_a_traceback(tmp_path, digits_teacher_weights):
    args = shlex.split(EXTRACT.format(weights=digits_teacher_weights))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "kdcache",
        *args,
        "--out",
        str(tmp_path / "c"),
        "--batch-size",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    while "img" not in seen:  # the progress bar: extraction has started
        char = proc.stderr.read(1)
        assert char, f"extract ended before it started: {seen}"
        seen += char
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert "Traceback" not in rest and "Error: interrupted" in rest


def test_an_unexpected_exception_is_one_line_naming_a_bug_and_v_shows_the_traceback(
    cache, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("kdcache.cache.reader.open_cache", broken)
    result = cli(["info", cache])
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "RuntimeError: boom" in line and "bug in kdcache" in line
    verbose = cli(["-v", "info", cache])
    assert isinstance(verbose.exception, RuntimeError)  # re-raised: Python prints the traceback


# --- full disk, read-only mount, permissions ---------------------------------------------------


def failing_set(code: int, prefix: str):  # type: ignore[no-untyped-def]
    """A LocalStore.set that fails with ``code`` for keys under ``prefix``."""
    original = zarr.storage.LocalStore.set

    async def set_(self, key, value):  # type: ignore[no-untyped-def]
        if key.startswith(prefix):
            raise OSError(code, os.strerror(code), str(Path(self.root) / key))
        return await original(self, key, value)

    return set_


def test_a_full_disk_during_extract_is_one_line_and_the_rerun_completes_a_valid_cache(
    tmp_path, digits_teacher_weights, monkeypatch
):
    out = tmp_path / "c"
    with monkeypatch.context() as m:
        m.setattr(zarr.storage.LocalStore, "set", failing_set(errno.ENOSPC, "logits/c/0/1"))
        result = extract(digits_teacher_weights, out)
    assert result.exit_code == 1
    assert "no space left on the device" in error_line(result.output)
    assert not (out / "block_done" / "c" / "0" / "1").exists()  # the failed block is not marked
    assert extract(digits_teacher_weights, out).exit_code == 0
    verify = cli(["verify", out, "--replay", "0"])
    assert verify.exit_code == 0, verify.output


def test_a_read_only_mount_is_named_as_such(tmp_path, digits_teacher_weights, monkeypatch):
    monkeypatch.setattr(zarr.storage.LocalStore, "set", failing_set(errno.EROFS, ""))
    result = extract(digits_teacher_weights, tmp_path / "c")
    assert result.exit_code == 1
    assert "read-only file system" in error_line(result.output)


def test_a_local_permission_error_is_not_called_a_credentials_problem(cache, monkeypatch):
    original = zarr.storage.LocalStore.get

    async def get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
        if key.startswith("block_done/"):
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(self.root) / key))
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    result = cli(["verify", cache, "--replay", "0"])
    assert result.exit_code == 1
    assert "permission denied" in error_line(result.output)
    assert "credential" not in result.output.lower()


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_checkpoint_or_temporary(
    cache, tmp_path, monkeypatch
):
    def no_space(obj, target, *args, **kwargs):
        # A partial write, then the disk is full (torch.save gets a path or an open file).
        if hasattr(target, "write"):
            target.write(b"\0" * 10)
        else:
            Path(target).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", str(getattr(target, "name", target)))

    monkeypatch.setattr("torch.save", no_space)
    run = tmp_path / "run"
    args = ["train", "--cache", cache, "--student", "resnet8", "--epochs", "1", "--workers", "0"]
    result = cli(
        [*args, "--max-samples", "32", "--verify-replay", "off", "--out", run, "--no-progress"]
    )
    assert result.exit_code == 1
    assert "no space left on the device" in error_line(result.output)
    assert not any(p.suffix in (".pt", ".tmp") for p in run.iterdir())


def torch_save_wrapping_enospc(obj, target, *args, **kwargs):  # type: ignore[no-untyped-def]
    """What torch.save does on a full disk: its zip writer's write fails with ENOSPC, and torch
    raises a RuntimeError while handling it (the OSError is only the RuntimeError's context)."""
    target.write(b"\0" * 10)
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904


def test_a_full_disk_inside_torch_save_is_no_space_naming_the_checkpoint(
    cache, tmp_path, monkeypatch
):
    """Issue 25 item 21: torch.save wraps the OSError in a RuntimeError; the user still reads
    "no space left" and the checkpoint's path, not "a bug in kdcache"."""
    monkeypatch.setattr("torch.save", torch_save_wrapping_enospc)
    run = tmp_path / "run"
    args = ["train", "--cache", cache, "--student", "resnet8", "--epochs", "1", "--workers", "0"]
    result = cli(
        [*args, "--max-samples", "32", "--verify-replay", "off", "--out", run, "--no-progress"]
    )
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "no space left on the device" in line and str(run / "last.pt") in line, line
    assert "bug in kdcache" not in result.output
    assert not any(p.suffix in (".pt", ".tmp") for p in run.iterdir())


def test_save_checkpoint_raises_the_os_error_with_the_path(tmp_path, monkeypatch):
    from kdcache.training import outputs

    monkeypatch.setattr("torch.save", torch_save_wrapping_enospc)
    with pytest.raises(OSError) as caught:
        outputs.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []  # no temporary left

    def other_runtime_error(obj, target, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("not a storage problem")

    monkeypatch.setattr("torch.save", other_runtime_error)
    with pytest.raises(RuntimeError, match="not a storage problem"):  # left as it is
        outputs.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})


def test_a_full_disk_while_packing_leaves_neither_the_archive_nor_a_partial_file(
    cache, tmp_path, monkeypatch
):
    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", no_space)
    out = tmp_path / "out" / "c.zip"
    out.parent.mkdir()
    result = cli(["pack", cache, out])
    assert result.exit_code == 1
    assert "no space left on the device" in error_line(result.output)
    assert list(out.parent.iterdir()) == []


# --- bounds ----------------------------------------------------------------------------------


def test_a_layout_beyond_the_machine_is_refused_before_the_cache_is_created(
    tmp_path, digits_teacher_weights
):
    out = tmp_path / "c"
    result = extract(digits_teacher_weights, out, "--views", "65536", "--chunk-rows", "1")
    assert result.exit_code == 1
    assert "blocks" in error_line(result.output) and "more rows per chunk" in result.output
    assert not out.exists()


def test_chunks_too_large_for_memory_are_refused():
    with pytest.raises(ConfigError, match="one chunk of"):
        bounds.check_layout(num_views=1, num_samples=10**6, num_classes=21841, chunk_rows=2**24)
    bounds.check_layout(num_views=162, num_samples=50_000, num_classes=100, chunk_rows=1024)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("augmentation", "num_views", 10**9), ("storage", "chunk_rows", 10**12)],
)
def test_info_refuses_a_cache_claiming_sizes_it_cannot_hold(cache, tmp_path, section, field, value):
    edited = tmp_path / "edited"
    shutil.copytree(cache, edited)
    doc = json.loads((edited / "zarr.json").read_text())
    attrs = doc["attributes"]["kdcache"]
    attrs[section][field] = value
    identity = {key: attrs[key] for key in schema.IDENTITY_SECTIONS}
    attrs["fingerprint"] = schema.identity_fingerprint(identity)  # a consistent edit
    (edited / "zarr.json").write_text(json.dumps(doc))
    result = cli(["info", edited])
    assert result.exit_code == 1
    assert "claims sizes this machine cannot hold" in error_line(result.output)
    result = cli(["verify", edited, "--replay", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "[FAIL] metadata" in result.output and "claims sizes" in result.output


# --- YAML ------------------------------------------------------------------------------------


def test_yaml_views_may_be_a_list(cache, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"cache: {cache}\nstudent: resnet8\nviews: [0]\nepochs: 1\nworkers: 0\n")
    run = tmp_path / "run"
    result = cli(
        ["train", "--config", config, "--out", run, "--max-samples", "32", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["config"]["views"] == [0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": "ten"}, "epochs must be an integer, got 'ten'"),
        ({"epochs": True}, "epochs must be an integer, got True"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"views": [True]}, "views must be view numbers"),
        ({"seed": -1}, "`seed` must be in 0..2**63-1"),
        ({"seed": 2**70}, "`seed` must be in 0..2**63-1"),
    ],
)
def test_settings_of_the_wrong_type_are_refused_by_name(settings, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace(".", r"\.")):
        TrainConfig.from_dict({"student": "resnet8", "out": "run", "dataset": "digits", **settings})


# --- pack ------------------------------------------------------------------------------------


def test_pack_refuses_a_symbolic_link_inside_an_array_folder(cache, tmp_path):
    linked = tmp_path / "linked"
    shutil.copytree(cache, linked)
    chunk = linked / "logits" / "c" / "0" / "1" / "0"
    outside = tmp_path / "outside-chunk"
    shutil.move(chunk, outside)
    chunk.symlink_to(outside)
    out = tmp_path / "linked.zip"
    result = cli(["pack", linked, out])
    assert result.exit_code == 1
    assert "is a symbolic link" in error_line(result.output)
    assert not out.exists()


def test_pack_leaves_out_a_leftover_temporary_file_that_verify_ignores(cache, tmp_path):
    leftover_cache = tmp_path / "leftover"
    shutil.copytree(cache, leftover_cache)
    leftover = leftover_cache / "logits" / "c" / "0" / "1" / f"0.{'ab' * 16}.partial"
    leftover.write_bytes(b"half a chunk")  # what a killed zarr write leaves
    assert cli(["verify", leftover_cache, "--replay", "0"]).exit_code == 0
    out = tmp_path / "leftover.zip"
    result = cli(["pack", leftover_cache, out])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert "logits/c/0/1/0" in names and not any(n.endswith(".partial") for n in names)
    assert cli(["verify", out, "--replay", "0"]).exit_code == 0


@pytest.mark.parametrize(
    "option, variable, value",
    [("--remote-cache-dir", "KDCACHE_REMOTE_CACHE_DIR", "off"),
     ("--storage-timeout", "KDCACHE_STORAGE_TIMEOUT", "3")],
)  # fmt: skip
def test_an_option_carried_by_the_environment_ends_with_its_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, variable: str, value: str
) -> None:
    """Run in-process (the API, a notebook, tests), a command's option must not leak into the
    next command: the variable is restored, or removed when it was not set."""
    monkeypatch.delenv(variable, raising=False)
    result = cli(["info", option, value, tmp_path / "absent.zarr"])
    assert result.exit_code == 1
    assert variable not in os.environ
    monkeypatch.setenv(variable, "earlier")
    cli(["info", option, value, tmp_path / "absent.zarr"])
    assert os.environ[variable] == "earlier"


# --- train --out and --views (issue 25, items 23-24) ------------------------------------------


@pytest.mark.parametrize("inside", ["", "logits", "runs/r1"])
def test_train_refuses_an_out_that_is_or_lies_inside_a_cache(cache, tmp_path, inside):
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    out = copy / inside if inside else copy
    for force in ([], ["--force"]):
        result = cli(["train", "--cache", copy, "--student", "resnet8", "--epochs", "1",
                      "--workers", "0", "--max-samples", "32", "--no-progress", "--out", out,
                      *force])  # fmt: skip
        assert result.exit_code != 0
        assert "a kdcache cache: a run folder must not be inside a cache" in error_line(
            result.output
        )
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # nothing touched


def test_train_refuses_a_view_named_twice(cache, tmp_path):
    result = cli(["train", "--cache", cache, "--student", "resnet8", "--epochs", "1",
                  "--workers", "0", "--no-progress", "--out", tmp_path / "run",
                  "--views", "0,0"])  # fmt: skip
    assert result.exit_code != 0
    assert "names view(s) [0] more than once" in error_line(result.output)
    assert not (tmp_path / "run").exists()


def test_extract_refuses_dtype_float32_with_topk(tmp_path, digits_teacher_weights):
    result = extract(digits_teacher_weights, tmp_path / "c", "--topk", "3", "--dtype", "float32")
    assert result.exit_code != 0
    assert "--dtype float32 has no effect with --topk" in error_line(result.output)
    assert not (tmp_path / "c").exists()
