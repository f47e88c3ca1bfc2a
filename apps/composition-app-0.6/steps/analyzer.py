"""The middle level: counts words, with a handle to the Tokenizer deployment."""

from __future__ import annotations

from helpers import most_common

import bioengine
from steps.tokenizer import Tokenizer


@bioengine.app(num_cpus=0.1, memory_mb=128, max_ongoing_requests=8)
class Analyzer:
    def __init__(self, tokenizer: Tokenizer, top: int = 3):
        self.tokenizer = tokenizer  # a BioEngineRuntimeHandle: awaited without .remote()
        self.top = top

    @bioengine.async_init
    async def check_tokenizer(self) -> None:
        self.ready = await self.tokenizer.split("ready") == ["ready"]

    @bioengine.method
    async def analyze(self, text: str) -> dict:
        words = await self.tokenizer.split(text)
        return {"words": len(words), "most_common": most_common(words, self.top)}
