"""Plain helpers, imported by the deployments as a top-level module of the app."""

from __future__ import annotations

from collections import Counter


def most_common(words: list[str], top: int) -> list[list]:
    """The ``top`` most frequent words as ``[word, count]`` pairs, first seen first on ties."""
    return [[word, count] for word, count in Counter(words).most_common(top)]
