"""Shared test set-up: tests never write into the repository and never download anything.

* ``WORKBENCH_DATA_DIR`` and ``WORKBENCH_RUNS_DIR`` point at one temporary folder per test
  session (shared by pytest-xdist workers, and inherited by notebook kernels the tests start).
* ``WORKBENCH_TEST=1``; Hugging Face hubs are offline; torch uses 2 threads.
* The repository root is on ``PYTHONPATH``, so kernels and subprocesses import this checkout's
  ``workbench`` even where it is not installed.
* Fixture ``repo_root``: the repository root as a Path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WORKBENCH_TEST", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_pythonpath = os.environ.get("PYTHONPATH", "")
if str(REPO_ROOT) not in _pythonpath.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), _pythonpath) if p)

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

_OWNER_VAR = "WORKBENCH_TEST_TMP"  # set by the process that made the folders (xdist controller)
_made_here: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point data and runs at a fresh temporary folder (workers reuse the controller's)."""
    global _made_here
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_OWNER_VAR):
        return  # an xdist worker: the controller's folders were inherited
    base = tempfile.mkdtemp(prefix="workbench-test-")
    _made_here = base
    os.environ[_OWNER_VAR] = base
    for var, sub in (("WORKBENCH_DATA_DIR", "data"), ("WORKBENCH_RUNS_DIR", "runs")):
        path = Path(base) / sub
        path.mkdir()
        os.environ[var] = str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's temporary folder (only in the process that made it)."""
    if _made_here:
        shutil.rmtree(_made_here, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("rl")``: the script ``benchmarks/rl.py`` imported as a module."""
    import importlib.util

    def load(name: str):
        path = REPO_ROOT / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation cost (and thrash a busy 2-core
    box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def quiet(monkeypatch):
    """No progress bars and no transformers chatter in the test output."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
