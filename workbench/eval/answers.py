"""Answer extraction and normalisation, per task format.

The workbench layout puts the answer after ``<eot>``; that is the primary extractor. For text
produced without ``<eot>`` (foreign checkpoints, explicit formats), the fallbacks follow the
formats of RESEARCH Part A 6 item 6: ``### X`` (iCoT / Coconut), ``The answer is: X`` (CODI,
LaTRO) and ``\\boxed{X}`` (Latent-SFT math).
"""

from __future__ import annotations

import re

_FALLBACKS = (
    re.compile(r"#+\s*(.+?)\s*$", re.S),
    re.compile(r"[Tt]he answer is:?\s*(.+?)\.?\s*$", re.S),
    re.compile(r"\\boxed\{([^{}]*)\}"),
)


def normalize_answer(text: str) -> str:
    """Compare answers up to whitespace: collapse runs, drop spaces inside digit runs and
    before punctuation."""
    text = " ".join(text.split())
    text = re.sub(r"(?<=\d) (?=\d)", "", text)
    text = re.sub(r" (?=[.,;:!?])", "", text)
    return text.strip()


def extract_fallback(text: str) -> str | None:
    """The answer in ``text`` by the first matching explicit format, else ``None``."""
    for pattern in _FALLBACKS:
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    return None
