"""What deploy_app asks the cluster for before it deploys an app: each class's GPUs sized from
either generation of the SDK's options (the older ``num_gpus``, the newer ``gpu_memory_mb``),
every replica of every class, and the proxy's ``proxy_memory_in_gb``. No Ray: the classes are
read by the SDK in this process, as the discovery task reads them inside Ray."""

# No `from __future__ import annotations`: the composed classes are found by their type hints.

from typing import Any

import pytest

import bioengine
from bioengine.composition import introspect_app
from bioengine_app_runtime.app06 import AppCodeError, deployment_resources, size_gpus
from bioengine_apps._deploy import fit_request, resources_grow
from bioengine_apps._state import AppRecord

MiB, GiB = 1024**2, 1024**3


@bioengine.app(num_cpus=1, num_gpus=0, memory_mb=512)
class OlderCpuApp:
    @bioengine.method
    async def ping(self) -> str:
        return "pong"


@bioengine.app(num_cpus=2, num_gpus=1, memory_mb=1024)
class OlderGpuApp:
    @bioengine.method
    async def ping(self) -> str:
        return "pong"


@bioengine.app(num_cpus=1, gpu_memory_mb=2048, memory_mb=1024)
class Segmenter:
    @bioengine.method
    async def segment(self) -> str:
        return "mask"


@bioengine.app(num_cpus=0.5, gpu_memory_mb=-1)
class WholeGpuApp:
    @bioengine.method
    async def ping(self) -> str:
        return "pong"


@bioengine.app(num_cpus=0, memory_mb=256)
class Front:
    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter

    @bioengine.method
    async def run(self) -> str:
        return await self.segmenter.segment()


def needed(
    app: type,
    *,
    disable_gpu: bool = False,
    cluster_gpus: float = 0,
    scaling: dict[str, dict[str, Any]] | None = None,
    proxy_memory_in_gb: float | None = None,
) -> dict[str, float]:
    """What deploy_app's fit check asks for (as ``AppsService._discover_06`` computes it)."""
    spec = introspect_app(app)
    num_gpus = {key: size_gpus(d, disable_gpu, cluster_gpus) for key, d in spec["deployments"].items()}
    by_class = {d["class_name"]: key for key, d in spec["deployments"].items()}
    rules = {by_class[name]: rule for name, rule in (scaling or {}).items()}
    return fit_request(deployment_resources(spec, num_gpus, rules), proxy_memory_in_gb)


def test_the_older_num_gpus_is_asked_for_as_given():
    assert needed(OlderCpuApp) == {"num_cpus": 1, "num_gpus": 0, "memory": 512 * MiB}
    # With no GPU in the cluster the request still names it: the cluster's check refuses it.
    assert needed(OlderGpuApp) == {"num_cpus": 2, "num_gpus": 1, "memory": 1024 * MiB}
    assert needed(OlderGpuApp, disable_gpu=True)["num_gpus"] == 0


def test_gpu_memory_is_a_whole_gpu_when_the_cluster_has_one():
    assert needed(Segmenter, cluster_gpus=1) == {"num_cpus": 1, "num_gpus": 1, "memory": 1024 * MiB}
    assert needed(WholeGpuApp, cluster_gpus=4)["num_gpus"] == 1
    assert needed(Segmenter, disable_gpu=True)["num_gpus"] == 0
    # No GPU at all: refused before the cluster is asked, saying how to run it anyway.
    with pytest.raises(
        AppCodeError, match=r"'Segmenter' needs a GPU \(gpu_memory_mb=2048\).*disable_gpu=True"
    ):
        needed(Segmenter, cluster_gpus=0)


def test_a_composed_gpu_class_counts_per_replica_and_the_proxy_adds_its_memory():
    assert needed(Front, cluster_gpus=2, scaling={"Segmenter": {"num_replicas": 2}}) == {
        "num_cpus": 2,
        "num_gpus": 2,
        "memory": (256 + 2 * 1024) * MiB,
    }
    with_proxy = needed(Front, cluster_gpus=2, proxy_memory_in_gb=0.5)
    assert with_proxy == {"num_cpus": 1, "num_gpus": 1, "memory": (256 + 1024) * MiB + GiB / 2}


def test_the_proxy_memory_alone_can_make_a_redeploy_ask_again():
    previous = AppRecord(
        application_id="a",
        artifact_id="local/a",
        resources={"num_cpus": 1.0, "num_gpus": 0.0, "memory": 512.0 * MiB},
        proxy_memory_in_gb=0.5,
    )
    same = fit_request(previous.resources, 0.5)
    assert same["memory"] == 512 * MiB + GiB / 2
    assert not resources_grow(same, previous)
    assert not resources_grow(fit_request(previous.resources, None), previous)
    assert resources_grow(fit_request(previous.resources, 2.0), previous)
    assert resources_grow(fit_request({"num_cpus": 1.0}, 0.5), None)
    assert fit_request({"num_cpus": 1.0}, None) == {"num_cpus": 1.0}
