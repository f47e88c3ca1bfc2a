"""The SDK installed alone (as an app author would, for local tests): a fresh venv with only it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LIBRARY = Path(__file__).resolve().parents[1]

APP_TEST = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    import bioengine
    from bioengine.composition import introspect_app, validate_application_kwargs
    from bioengine.runtime import LifecycleRunner

    @bioengine.app(num_cpus=1, memory_mb=256, pip=["numpy==2.1.0"])
    class Worker:
        @bioengine.method
        async def double(self, x: int) -> int:
            \"\"\"Double x.\"\"\"
            return 2 * x

    @bioengine.app(num_gpus=0, max_ongoing_requests=5)
    class Entry:
        def __init__(self, worker: Worker, scale: int = 1):
            self.worker, self.scale = worker, scale
            self.ready = False

        @bioengine.async_init
        async def start(self):
            self.ready = True

        @bioengine.method
        async def run(self, x: int) -> int:
            \"\"\"Run.\"\"\"
            return self.scale * await self.worker.double(x)

    async def main():
        entry = Entry(Worker(), scale=3)
        await LifecycleRunner(entry).check_health()
        assert entry.ready and await entry.run(2) == 12
        spec = introspect_app(Entry)
        validate_application_kwargs(spec, {"Entry": {"scale": 2}})
        assert await bioengine.datasets.list_datasets() == {}
        return spec

    spec = asyncio.run(main())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "zarr", "aiohttp", "numpy"))
    print(json.dumps({
        "version": bioengine.__version__,
        "ray_installed": importlib.util.find_spec("ray") is not None,
        "loaded": loaded,
        "order": spec["order"],
    }))
    """
)


def test_the_sdk_alone_in_a_fresh_venv(tmp_path):
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        pytest.fail("uv must be on PATH (pip install uv), or named by $UV")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), str(LIBRARY)], check=True, env=env, timeout=600
    )
    (tmp_path / "app_test.py").write_text(APP_TEST)
    result = subprocess.run(
        [str(python), "app_test.py"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == "0.1.0"
    assert report["ray_installed"] is False
    assert not [m for m in report["loaded"] if m.split(".")[0] in ("ray", "zarr", "aiohttp")]
    assert report["order"] == ["__main__:Worker", "__main__:Entry"]
    freeze = subprocess.run(
        [uv, "pip", "freeze", "--python", str(python)], capture_output=True, text=True, env=env
    )
    installed = {line.split("==")[0].split(" @ ")[0].lower() for line in freeze.stdout.splitlines()}
    assert "bioengine-services-sdk" in installed
    assert not installed & {"ray", "bioengine-datasets-client", "bioengine-common", "zarr"}
