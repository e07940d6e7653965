"""The house figure theme: a light white layout shared by every figure of the lens and viz."""

from __future__ import annotations

__all__ = ["WHITE", "titled"]

WHITE = {
    "plot_bgcolor": "white",
    "paper_bgcolor": "white",
    "xaxis_gridcolor": "#ebebeb",
    "yaxis_gridcolor": "#ebebeb",
    "xaxis_zerolinecolor": "#d9d9d9",
    "yaxis_zerolinecolor": "#d9d9d9",
}
"""A light white layout like plotly's ``plotly_white`` template (~8x cheaper to apply)."""


def titled(text: str, method: str) -> str:
    """A figure title prefixed with the method name (``"method: text"``) when there is one."""
    return f"{method}: {text}" if method else text
