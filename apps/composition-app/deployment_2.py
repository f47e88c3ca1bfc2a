"""Adds numbers to a start number given as an init kwarg."""

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Deployment2:
    def __init__(self, start_number: int = 0):
        self.start_number = start_number

    async def add(self, number: int) -> int:
        return self.start_number + number
