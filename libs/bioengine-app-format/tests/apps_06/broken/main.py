import bioengine


@bioengine.app(num_gpus=1, gpu_memory_mb=1024)
class BrokenApp:
    def check_health(self) -> None:
        pass

    @bioengine.smoke_test
    def first(self) -> None:
        pass

    @bioengine.smoke_test
    def second(self) -> None:
        pass

    async def async_init(self) -> None:
        pass

    @bioengine.method
    def ping(self) -> str:
        return "pong"
