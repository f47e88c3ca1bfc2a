"""Reports how long it has been running."""

import time

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Deployment1:
    def __init__(self):
        self.started = time.time()

    async def get_uptime(self) -> float:
        return time.time() - self.started
