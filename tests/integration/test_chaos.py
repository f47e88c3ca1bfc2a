"""Chaos on a running one-command worker: every fault of issue 15 in turn, with probers.

One worker (single-machine), the demo app deployed with auto_redeploy, a dataset array opened
once. Each fault (SIGKILL of each service, of the embedded Hypha server, of SeaweedFS, of the
whole Ray head; an update of the app) must end with the app answering through its Hypha
service, the worker ready and the open array reading the same data, and nothing lost: the app
and its artifact are still there, and no probe fails during a final watch of 90 s (three times
the 30 s call timeout, the longest timeout a late failure could hide behind). Recovery times
are printed by bench/recovery.py (the same scenario), not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bioengine_worker.testing import WorkerProcess
from bioengine_worker.testing.faults import FAULTS, chaos, make_dataset

DEMO = Path(__file__).resolve().parents[2] / "apps" / "demo-app"

# Eight faults, each waited out, then a 90 s watch: about 5 minutes alone, more under load.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    workspace_dir = tmp_path_factory.mktemp("chaos")
    dataset = make_dataset(workspace_dir)
    worker = WorkerProcess(workspace_dir, "--mode", "single-machine", "--hypha-port", "0")
    try:
        worker.wait_ready()
        yield worker, dataset
    finally:
        worker.stop()


async def test_no_fault_loses_an_app_an_artifact_or_a_read(worker):
    process, dataset = worker
    report = await chaos(process, DEMO, dataset, FAULTS, watch_after=90.0)
    for record in report.records:
        assert record.app_back_after is not None, f"the app never answered again after {record}"
        assert record.ready_after is not None, f"the worker never became ready again after {record}"
        assert record.dataset_back_after is not None, f"the array never read again after {record}"
    by_fault = {record.fault: record for record in report.records}
    # The open array rides out a restart of datasets-svc (same port, client retries).
    assert by_fault["datasets"].failed_dataset_reads == 0, by_fault["datasets"]
    # An update keeps the app's Hypha service answering throughout.
    assert by_fault["app-update"].failed_app_calls == 0, by_fault["app-update"]
    # Killing a service other than Hypha itself never interrupts the app.
    for name in ("apps", "cluster", "gateway", "datasets"):
        assert by_fault[name].failed_app_calls == 0, by_fault[name]
    assert not any(report.late_failures.values()), report.late_failures
    assert report.app_status["status"] == "RUNNING", report.app_status
    assert report.artifacts_after == report.artifacts_before
