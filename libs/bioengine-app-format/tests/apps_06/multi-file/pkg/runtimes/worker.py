import bioengine as be


@be.app(num_cpus=1, gpu_memory_mb=2048, pip=["humanize==4.9.0"])
class Worker:
    @be.async_init
    async def async_init(self) -> None:  # the hook may take the marker's name
        self.count = 0

    @be.method
    async def work(self, text: str) -> str:
        self.count += 1
        return text[::-1]
