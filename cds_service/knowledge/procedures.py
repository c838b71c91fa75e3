"""Procedures: which procedure an order or a procedure record names."""

from __future__ import annotations

import functools
import re


class ProcedureMatcher:
    """Which procedure an order or procedure record names: by code first, then by its text."""

    def __init__(self, data: dict):
        self.titles = {name: e["title"] for name, e in data.items() if not name.startswith("_")}
        self.by_code = {
            (system, code): name
            for name, e in data.items()
            if not name.startswith("_")
            for system, codes in e["codes"].items()
            for code in codes
        }
        self.patterns = [
            (
                name,
                [
                    re.compile(
                        r"(?<![\w-])" + re.escape(w.rstrip("*")) + (r"[\w-]*" if w.endswith("*") else "") + r"(?![\w-])"
                    )
                    for w in words
                ],
            )
            for name, e in data.items()
            if not name.startswith("_")
            for words in e["text"]
        ]

    def match(self, codings: list[dict], texts: list[str]) -> tuple[str, str] | None:
        """(procedure, how) where how is 'code' or 'text'; None when nothing is recognised."""
        for coding in codings:
            name = self.by_code.get((coding.get("system"), coding.get("code")))
            if name:
                return name, "code"
        for text in texts:
            name = self._named_in(text)
            if name:
                return name, "text"
        return None

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - one matcher per process, texts repeat across charts
    def _named_in(self, text: str) -> str | None:
        """The procedure a text names. Cached: a long chart repeats the same few displays hundreds of
        times ("Appendectomy", "CBC panel"), and every pattern is tried on each."""
        lowered = text.lower()
        for name, words in self.patterns:
            if all(w.search(lowered) for w in words):
                return name
        return None
