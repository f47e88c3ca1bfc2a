"""The SLURM panel in a real browser, fed by a stand-in ``bioengine-worker`` whose status has
the slurm-mode shape (jobs, decisions, the job script): the page shows each as given, without a
SLURM cluster to wait for. The real slurm-mode status is tested in cluster-svc's tests."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bioengine_common.testing import ADMIN_USER
from bioengine_dashboard import DASHBOARD_SERVICE_ID, dashboard_service, dashboard_url

LAPTOP = {"width": 1280, "height": 860}

pytestmark = pytest.mark.integration

NOW = time.time()
JOB_SCRIPT = (
    "#!/bin/bash\n#SBATCH --job-name=bioengine-ray-abc123\n#SBATCH --cpus-per-task=4\nray start --block\n"
)
SLURM = {
    "tag": "abc123",
    "job_name": "bioengine-ray-abc123",
    "worker": {
        "cpus": 4,
        "memory_gb": 16,
        "gpus": 0,
        "time_limit": "04:00:00",
        "partition": None,
        "image": None,
    },
    "min_workers": 0,
    "max_workers": 4,
    "live_jobs": 2,
    "jobs": [
        {
            "job_id": "101",
            "state": "running",
            "reason": None,
            "node": "node-a",
            "age_s": 320.0,
            "ray_node_id": "f" * 40,
            "lost": False,
        },
        {
            "job_id": "102",
            "state": "pending",
            "reason": "Resources",
            "node": None,
            "age_s": 12.0,
            "ray_node_id": None,
            "lost": False,
        },
    ],
    "decisions": [
        {
            "at": NOW - 300,
            "action": "submit",
            "message": "1 task needs 4 CPUs; no node has them: submit 1 job",
            "inputs": {"demand": [{"CPU": 4}], "live_jobs": 0},
        },
        {
            "at": NOW - 10,
            "action": "wait",
            "message": "job 102 is pending (Resources): not submitting again",
            "inputs": {"pending": ["102"]},
        },
    ],
    "backoff": {"failures": 0, "retry_in_s": None},
    "blocked": None,
    "error": None,
    "last_round_at": NOW - 2,
    "rounds": 57,
    "job_script": JOB_SCRIPT,
}


class StandIn:
    """The public API methods the page calls, answering a slurm-mode status."""

    async def get_status(self, context: Any = None) -> dict:
        return {
            "is_ready": True,
            "not_ready_reasons": [],
            "bioengine_version": "0.1.0",
            "worker_mode": "slurm",
            "service_uptime": 60.0,
            "services": {},
            "ray_cluster": {"mode": "slurm", "cluster": {}, "nodes": {}, "slurm": SLURM},
        }

    async def check_access(self, context: Any = None) -> bool:
        return True

    async def get_app_status(
        self, application_ids: Any = None, logs_tail: int = 30, context: Any = None
    ) -> dict:
        return {}

    async def list_datasets(self, context: Any = None) -> dict:
        return {}


async def test_the_slurm_panel_shows_jobs_decisions_and_the_job_script(
    hypha_server, admin_client, chromium, artifacts
):
    from playwright.async_api import async_playwright

    stand_in = StandIn()
    info = await admin_client.register_service(
        {
            "id": "dashboard-test-worker",
            "config": {"visibility": "public", "require_context": True},
            "get_status": stand_in.get_status,
            "check_access": stand_in.check_access,
            "get_app_status": stand_in.get_app_status,
            "list_datasets": stand_in.list_datasets,
        }
    )
    page_config = {"workspace": hypha_server.workspace, "worker_service_id": info["id"]}
    await admin_client.register_service(dashboard_service(page_config))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport=LAPTOP)
            await page.goto(dashboard_url(hypha_server.url, hypha_server.workspace))
            await page.fill("#token", hypha_server.mint(ADMIN_USER, "admin"))
            await page.click("#login-button")
            await page.wait_for_selector("#services-table", timeout=30_000)
            await page.click("#tabs button[data-panel=slurm]")
            await page.wait_for_selector("#jobs-table", timeout=20_000)
            jobs = await page.locator("#jobs-table tbody tr").evaluate_all(
                "rows => rows.map(r => [r.dataset.job, r.dataset.state, r.innerText])"
            )
            assert [(j, s) for j, s, _ in jobs] == [("101", "running"), ("102", "pending")]
            assert "Resources" in jobs[1][2]
            decisions = await page.locator("#decisions-table tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.decision)"
            )
            assert decisions == ["wait", "submit"]  # newest first
            assert (await page.inner_text("#job-script")).strip() == JOB_SCRIPT.strip()
            assert "2 (min 0, max 4)" in await page.inner_text('[data-field="live-jobs"]')
            await page.locator("#decisions-table details").first.click()
            await page.screenshot(path=str(artifacts / "admin-slurm-jobs.png"), full_page=True)
        finally:
            await browser.close()
            await admin_client.unregister_service(DASHBOARD_SERVICE_ID)
