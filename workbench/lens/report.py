"""One static, offline HTML report of trajectory figures and tables (no kernel needed).

plotly.js is inlined exactly once (with the first figure); every other figure is a
``<div>`` that reuses it, so a report with ten figures is one ~4.5 MB file, not ten copies.
The file is written to a temporary name beside the target and moved into place with
``os.replace``, so a reader never sees half a report.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from workbench.runs import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["write_trajectory_report", "write_figure_html", "resolve_out_dir", "atomic_write_text"]

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.meta { color: #666; font-size: 0.9em; margin-top: 0; }
table.dataframe { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
table.dataframe th, table.dataframe td { border: 1px solid #ddd; padding: 3px 8px;
       text-align: right; }
table.dataframe th { background: #f4f4f4; }
nav a { margin-right: 12px; font-size: 0.9em; }
"""


def _anchor(name: str, i: int) -> str:
    return f"s{i}-" + "".join(c if c.isalnum() else "-" for c in name.lower())[:40]


def _table_html(df: pd.DataFrame, max_rows: int) -> str:
    more = len(df) - max_rows
    body = df.head(max_rows).to_html(
        index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, escape=True
    )
    if more > 0:
        body += f"<p class='meta'>... {more} more rows not shown</p>"
    return body


def write_trajectory_report(
    path: str | Path,
    figures: Mapping[str, go.Figure],
    title: str = "Latent trajectories",
    tables: Mapping[str, pd.DataFrame] | pd.DataFrame | None = None,
    *,
    description: str | None = None,
    max_table_rows: int = 200,
) -> Path:
    """Write figures (and tables) into ONE self-contained HTML file viewable offline.

    Args:
        path: Target file (folders are created).
        figures: ``{section title: figure}``, in display order.
        title: Page title.
        tables: ``{section title: DataFrame}`` (or one DataFrame) shown after the figures.
        description: A paragraph under the title (plain text, escaped).
        max_table_rows: Rows shown per table.

    Returns:
        The path written.
    """
    if isinstance(tables, pd.DataFrame):
        tables = {"Table": tables}
    tables = dict(tables or {})
    sections, nav = [], []
    for i, (name, fig) in enumerate(figures.items()):
        anchor = _anchor(name, i)
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=(i == 0),
            div_id=f"fig-{anchor}",
            config={"responsive": True, "displaylogo": False},
        )
        sections.append(f"<section id='{anchor}'><h2>{html.escape(name)}</h2>\n{div}\n</section>")
        nav.append(f"<a href='#{anchor}'>{html.escape(name)}</a>")
    for j, (name, df) in enumerate(tables.items()):
        anchor = _anchor(name, len(sections) + j)
        sections.append(
            f"<section id='{anchor}'><h2>{html.escape(name)}</h2>\n"
            f"{_table_html(df, max_table_rows)}"
            "\n</section>"
        )
        nav.append(f"<a href='#{anchor}'>{html.escape(name)}</a>")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    desc = f"<p>{html.escape(description)}</p>" if description else ""
    doc = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class='meta'>workbench report, {stamp}; "
        f"{len(figures)} figure(s), {len(tables)} table(s); works offline</p>\n{desc}\n"
        f"<nav>{' '.join(nav)}</nav>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    return atomic_write_text(path, doc)


def write_figure_html(path: str | Path, figure: go.Figure, title: str | None = None) -> Path:
    """One figure as a standalone offline HTML file (plotly.js inlined), written atomically."""
    name = title or (
        figure.layout.title.text if figure.layout.title and figure.layout.title.text else "Figure"
    )
    return write_trajectory_report(path, {name: figure}, title=name)


def resolve_out_dir(out_dir: str | Path) -> Path:
    """Where a notebook writes.

    Absolute paths as given; ``runs/...`` under ``workbench.paths.runs_dir()``
    (``$WORKBENCH_RUNS_DIR``); other relative paths under the repository root (never the
    notebook's working directory).
    """
    from workbench.paths import repo_root, runs_dir

    p = Path(out_dir).expanduser()
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "runs":
        return runs_dir().joinpath(*p.parts[1:])
    return repo_root() / p
