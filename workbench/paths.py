"""Where the workbench reads and writes: the repository root, data, runs and shared folders.

One place decides these so that notebooks, the CLI and tests agree, and so that tests (or a
user with a big scratch disk) can move them with an environment variable instead of editing
code: ``WORKBENCH_DATA_DIR``, ``WORKBENCH_RUNS_DIR`` and ``WORKBENCH_SHARED_DIR``.
Nothing here creates folders; writers create what they need.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The folder holding ``pyproject.toml`` above the package; the current directory otherwise.

    The fallback covers an installed (non-editable) package, where no source tree exists.
    """
    for folder in (_PACKAGE_DIR, *_PACKAGE_DIR.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd()


def _from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else default


def data_dir() -> Path:
    """Datasets and their cache: ``$WORKBENCH_DATA_DIR``, else ``<repo>/data``."""
    return _from_env("WORKBENCH_DATA_DIR", repo_root() / "data")


def runs_dir() -> Path:
    """Training runs, checkpoints and results: ``$WORKBENCH_RUNS_DIR``, else ``<repo>/runs``."""
    return _from_env("WORKBENCH_RUNS_DIR", repo_root() / "runs")


def shared_dir() -> Path:
    """Read-only material beside the repo (real benchmark data): ``$WORKBENCH_SHARED_DIR``,
    else ``<repo>/../shared``."""
    return _from_env("WORKBENCH_SHARED_DIR", repo_root().parent / "shared")
