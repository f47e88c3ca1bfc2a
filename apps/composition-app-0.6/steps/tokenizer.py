"""The last level: splits a text into words."""

from __future__ import annotations

import re

import bioengine

_WORD = re.compile(r"[\w']+")


@bioengine.app(num_cpus=0.1, memory_mb=128, max_ongoing_requests=8)
class Tokenizer:
    def __init__(self, lowercase: bool = True):
        self.lowercase = lowercase

    @bioengine.method
    async def split(self, text: str) -> list[str]:
        """The words of ``text``."""
        return _WORD.findall(text.lower() if self.lowercase else text)
