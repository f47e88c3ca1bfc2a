"""The entry: publishes ``run`` and ``describe``; composes Analyzer (which composes Tokenizer)."""

from __future__ import annotations

import asyncio

from pydantic import Field
from steps.analyzer import Analyzer
from steps.tokenizer import Tokenizer

import bioengine


@bioengine.app(num_cpus=0.1, memory_mb=128, max_ongoing_requests=8)
class Pipeline:
    def __init__(self, analyzer: Analyzer, tokenizer: Tokenizer, label: str = "pipeline"):
        self.analyzer = analyzer
        self.tokenizer = tokenizer
        self.label = label

    @bioengine.smoke_test
    async def try_the_chain(self) -> None:
        result = await self.run("a b a")
        assert result["analysis"]["most_common"][0] == ["a", 2], result

    @bioengine.method
    async def run(self, text: str = Field(..., description="The text to analyse")) -> dict:
        """Tokenize and analyse ``text`` through the composed deployments, concurrently."""
        words, analysis = await asyncio.gather(self.tokenizer.split(text), self.analyzer.analyze(text))
        return {"label": self.label, "words": words, "analysis": analysis}

    @bioengine.method
    async def describe(self) -> dict:
        """Which classes handle a call, and the raw handle's type (for Serve's own features)."""
        return {"label": self.label, "raw_handle": type(self.analyzer._raw).__name__}
