from utils import shout

from bioengine import app, method
from pkg.runtimes.worker import Worker


@app(num_cpus=0, memory_mb=256, max_ongoing_requests=20)
class EntryApp:
    def __init__(self, worker: Worker, prefix: str = ">"):
        self.worker = worker
        self.prefix = prefix

    @method
    async def process(self, text: str) -> str:
        return self.prefix + shout(await self.worker.work(text))

    @method(context=True)
    async def reset(self, context: dict | None = None) -> str:
        return "reset"
