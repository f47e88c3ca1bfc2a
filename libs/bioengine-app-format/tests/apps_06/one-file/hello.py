import bioengine


@bioengine.app(num_cpus=1, memory_mb=256)
class HelloApp:
    def __init__(self, greeting: str = "Hello"):
        self.greeting = greeting

    @bioengine.async_init
    async def warm_up(self) -> None:
        self.ready = True

    @bioengine.smoke_test
    async def try_it(self) -> None:
        assert await self.greet("test") == f"{self.greeting}, test!"

    @bioengine.health_check()
    def alive(self) -> None:
        pass

    @bioengine.method
    async def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}!"
