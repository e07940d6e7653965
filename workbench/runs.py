"""Run folders: where a demo, notebook or CLI run writes its tables, figures and metrics.

Every file is written atomically (:mod:`workbench.io`: temp file + fsync + ``os.replace``) so a
crash never leaves a half-written result next to good ones. ``atomic_write_text`` is re-exported
from :mod:`workbench.io` for older imports.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from workbench.io import atomic_write_json, atomic_write_text
from workbench.paths import runs_dir

__all__ = ["atomic_write_text", "new_run_dir", "write_figure", "write_json", "write_table"]


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


def _json_default(value):
    """numpy / torch scalars and arrays as numbers and lists; anything else as ``str``."""
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar/array, torch tensor
        try:
            return value.tolist()
        except (TypeError, ValueError, RuntimeError):
            pass
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON: a reader (or a sweep resumed after a kill) never sees a half-written file.

    numpy / torch numbers and arrays are written as JSON numbers and lists, any other object
    json cannot encode (a Path, a dtype) as its ``str``; NaN and infinity are written as
    ``NaN`` / ``Infinity``, which Python's and pandas' JSON readers accept.
    """
    return atomic_write_json(path, obj, indent=2, default=_json_default)


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
