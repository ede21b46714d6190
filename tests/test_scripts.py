"""Every script in the repository runs: each module under benchmarks/, examples/ and experiments/
imports, and each script answers ``--help`` (run as ``__main__`` with its own argv, as a user
would run it; all in one child process, so the check stays quick).

A script whose import broke (a name moved out of a kdcache module) fails here, not on the day
someone needs its figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(
    path
    for folder in ("benchmarks", "examples", "experiments")
    for path in (REPO / folder).rglob("*.py")
)
SCRIPTS = [path for path in MODULES if 'if __name__ == "__main__":' in path.read_text()]


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_scripts_are_found() -> None:
    names = {_id(p) for p in SCRIPTS}
    assert {"benchmarks/bench_sparse_students.py", "examples/own_loop.py"} <= names
    assert "experiments/cifar100/run.py" in names


@pytest.mark.parametrize("path", MODULES, ids=_id)
def test_each_module_imports(path: Path) -> None:
    name = "_script_" + _id(path).removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the body runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)


# Runs each script as ``python SCRIPT --help`` would (``runpy`` as ``__main__``, its own argv),
# all in one child process: one interpreter start and one torch import instead of one per script.
_HELP_ALL = """
import contextlib, io, json, runpy, sys
results = {}
for path in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        code, out = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
    results[path] = {"code": code, "output": out.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, dict[str, object]]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, *map(str, SCRIPTS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", SCRIPTS, ids=_id)
def test_each_script_answers_help(path: Path, helps: dict[str, dict[str, object]]) -> None:
    result = helps[str(path)]
    assert result["code"] == 0, result["output"]
    assert "usage:" in str(result["output"]).lower(), result["output"]
