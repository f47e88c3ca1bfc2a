"""Entry deployment of the composition app: combines the two other deployments' answers.

Each extra deployment of the manifest arrives as a DeploymentHandle in the parameter named after
its file stem (deployment_1, deployment_2).
"""

import asyncio

from hypha_rpc.utils.schema import schema_method
from pydantic import Field
from ray import serve
from ray.serve.handle import DeploymentHandle


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class CompositionDeployment:
    def __init__(
        self,
        deployment_1: DeploymentHandle,
        deployment_2: DeploymentHandle,
        demo_input: str = "Hello World!",
    ):
        self.deployment_1 = deployment_1
        self.deployment_2 = deployment_2
        self.demo_input = demo_input

    @schema_method
    async def ping(self) -> str:
        """Answers 'pong'."""
        return "pong"

    @schema_method
    async def calculate_result(
        self, number: int = Field(..., description="Added to Deployment2's start number.")
    ) -> str:
        """Combine Deployment1's uptime, Deployment2's sum and the demo input string."""
        uptime, result = await asyncio.gather(
            self.deployment_1.get_uptime.remote(), self.deployment_2.add.remote(number)
        )
        return f"Uptime: {uptime:.1f} s, Result: {result}, Demo string: {self.demo_input}"
