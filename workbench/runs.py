"""Run folders: where a demo, notebook or CLI run writes its tables, figures and metrics.

Every file is written atomically (temp file + ``os.replace``) so a crash never leaves a
half-written result next to good ones.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from workbench.paths import runs_dir


def new_run_dir(name: str, root: str | Path | None = None) -> Path:
    """A fresh ``<root>/<name>-<timestamp>`` folder (``root`` defaults to ``runs/``)."""
    base = Path(root) if root is not None else runs_dir()
    path = base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    i = 1
    while path.exists():
        path = base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{i}"
        i += 1
    path.mkdir(parents=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary, shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON (non-finite floats become null-safe strings via ``default=str``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def write_table(path: str | Path, df: pd.DataFrame) -> Path:
    """Atomic CSV."""
    return atomic_write_text(path, df.to_csv(index=False))


def write_figure(path: str | Path, fig) -> Path:
    """Atomic standalone HTML; plotly.js is written once beside it (works offline, no CDN)."""
    path = Path(path)
    html = fig.to_html(include_plotlyjs="directory", full_html=True)
    js = path.parent / "plotly.min.js"
    if not js.exists():
        from plotly.offline import get_plotlyjs

        atomic_write_text(js, get_plotlyjs())
    return atomic_write_text(path, html)
