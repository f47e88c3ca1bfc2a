"""The dashboard page in a real browser (Debian's chromium through Playwright) against a real
worker: each panel shows what the public API answers the same token, a non-admin sees less, the
Stop button stops an app. Screenshots go to the artifacts folder (``tests/browser/artifacts``, or
``$BIOENGINE_BROWSER_ARTIFACTS``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bioengine_common import connect, mint_token
from bioengine_common.testing import eventually
from bioengine_dashboard import dashboard_url
from bioengine_worker.testing import WorkerProcess, faults

# The first test also waits for the stack and the app's deployment (minutes on a loaded machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
APP_ID = "dash-demo"
VIEWER = "viewer-1"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

#: Datasets of the stack: who may read them.
DATASETS = {
    "cells": {"authorized_users": [VIEWER], "public": False},
    "secret": {"authorized_users": [], "public": False},
    "open-data": {"authorized_users": [], "public": True},
}


def _write_datasets(data_dir: Path) -> None:
    for name, rules in DATASETS.items():
        store = data_dir / name / "image.zarr"
        store.mkdir(parents=True)
        (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
        manifest = {"name": f"{name} images", "description": f"the {name} test dataset", **rules}
        (data_dir / name / "manifest.yaml").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[WorkerProcess]:
    # ``chromium`` first: no minutes of start-up without a browser.
    base = tmp_path_factory.mktemp("dashboard")
    _write_datasets(base / "datasets")
    stack = WorkerProcess(base, "--mode", "single-machine", "--hypha-port", "0")
    try:
        stack.wait_ready(timeout=480)
        deployed = subprocess.run(
            [sys.executable, "-c", "from bioengine_worker.cli import main; main()", "apps", "deploy",
             str(ROOT / "apps" / "demo-app"), "--app-id", APP_ID, "--json", "--workspace-dir", str(base)],
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def tokens(stack: WorkerProcess) -> dict[str, str]:
    secret = (stack.dir / "hypha" / "jwt_secret").read_text().strip()
    workspace = stack.connection["workspace"]
    return {
        "admin": stack.connection["token"],
        "viewer": mint_token(secret, VIEWER, workspace, "read", expires_in=3600),
    }


@pytest.fixture(scope="module")
async def browser(stack: WorkerProcess, chromium: str, artifacts: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        await browser.close()


async def _api(stack: WorkerProcess, token: str) -> tuple[Any, Any]:
    c = stack.connection
    server = await connect(c["server_url"], token=token)
    return server, await server.get_service(f"{c['workspace']}/bioengine-worker")


async def _page(browser: Any, stack: WorkerProcess, token: str | None, viewport: dict = LAPTOP) -> Any:
    """A new page signed in with ``token`` (None: without a token), the overview loaded."""
    page = await browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    await page.goto(dashboard_url(stack.connection["server_url"], stack.connection["workspace"]))
    await page.wait_for_selector("#login-form", state="visible")
    if token is None:
        await page.click("#anonymous")
    else:
        await page.fill("#token", token)
        await page.click("#login-button")
    await page.wait_for_selector("#services-table", timeout=30_000)
    return page


async def _panel(page: Any, name: str, ready: str) -> Any:
    await page.click(f"#tabs button[data-panel={name}]")
    await page.wait_for_selector(f"#panel-{name} {ready}", timeout=20_000)
    return page.locator(f"#panel-{name}")


async def _shot(page: Any, artifacts: Path, name: str) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


async def test_admin_sees_each_panel_as_the_api_answers(stack, tokens, browser, artifacts):
    server, worker = await _api(stack, tokens["admin"])
    page = await _page(browser, stack, tokens["admin"])
    try:
        status = await worker.get_status()
        assert await page.text_content("#whoami") == "bioengine-admin (admin)"
        # Overview: every service with its state, the version, ready.
        for name, entry in status["services"].items():
            shown = page.locator(f'#services-table tr[data-service="{name}"]')
            assert await shown.get_attribute("data-up") == str(entry["up"]).lower()
            assert entry["service_id"] in await shown.inner_text()
        assert status["bioengine_version"] in await page.inner_text('[data-field="version"]')
        assert await page.inner_text("#worker-state") == "ready"
        await _shot(page, artifacts, "admin-overview")

        # Cluster: the API's nodes and totals, charts with at least the current point.
        panel = await _panel(page, "cluster", "#nodes-table")
        ray_cluster = (await worker.get_status())["ray_cluster"]
        assert "usage_history" in ray_cluster
        shown_nodes = await panel.locator("#nodes-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.node)"
        )
        assert set(shown_nodes) == set(ray_cluster["nodes"])
        total_cpu = ray_cluster["cluster"]["total_cpu"]
        assert f"/ {total_cpu:g}" in await panel.locator('[data-field="cpu"]').inner_text()
        assert int(await panel.locator(".charts").get_attribute("data-points")) >= 1
        assert await panel.locator(".charts canvas").count() == 3
        await _shot(page, artifacts, "admin-cluster")

        # SLURM: this worker runs single-machine, and the page says so.
        panel = await _panel(page, "slurm", ".card")
        assert "single-machine mode" in await panel.inner_text()
        await _shot(page, artifacts, "admin-slurm")

        # Apps: the app with its state, methods and log tail; admin buttons.
        apps = await worker.get_app_status(logs_tail=5)
        panel = await _panel(page, "apps", f'article[data-app="{APP_ID}"]')
        card = panel.locator(f'article[data-app="{APP_ID}"]')
        await eventually(
            lambda: card.get_attribute("data-status"), 30, "the app's state on the page"
        )  # rendered
        assert await card.get_attribute("data-status") == apps[APP_ID]["status"] == "RUNNING"
        text = await card.inner_text()
        for method in apps[APP_ID]["available_methods"]:
            assert method in text
        assert apps[APP_ID]["service_ids"][0]["websocket_service_id"] in text
        assert await card.locator('button[data-action="stop"]').count() == 1
        assert await card.locator("details").count() >= 1  # replica logs
        await _shot(page, artifacts, "admin-apps")

        # Datasets: what list_datasets answers the admin (all of them), with the access URL.
        datasets = await worker.list_datasets()
        panel = await _panel(page, "datasets", "#datasets-table")
        shown = await panel.locator("#datasets-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.dataset)"
        )
        assert sorted(shown) == sorted(datasets) == sorted(DATASETS)
        http_url = status["services"]["datasets"]["status"]["http_url"]
        assert f"{http_url}/data/cells/" in await panel.inner_text()
        await _shot(page, artifacts, "admin-datasets")

        # A phone's width: one column, no horizontal scrolling of the page.
        await page.set_viewport_size(PHONE)
        for name, ready in (("overview", "#services-table"), ("apps", "article")):
            await _panel(page, name, ready)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{name} panel is {width} px wide at {PHONE['width']} px"
            await _shot(page, artifacts, f"phone-{name}")
        assert page.errors == []
    finally:
        await page.close()
        await server.disconnect()


async def test_a_viewer_sees_what_the_api_gives_them_and_no_admin_controls(stack, tokens, browser, artifacts):
    server, worker = await _api(stack, tokens["viewer"])
    page = await _page(browser, stack, tokens["viewer"])
    try:
        assert await worker.check_access() is False
        assert await page.text_content("#whoami") == VIEWER
        panel = await _panel(page, "datasets", "#datasets-table")
        datasets = await worker.list_datasets()
        shown = await panel.locator("#datasets-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.dataset)"
        )
        assert sorted(shown) == sorted(datasets) == ["cells", "open-data"]
        await _shot(page, artifacts, "viewer-datasets")

        apps = await worker.get_app_status()
        panel = await _panel(page, "apps", ".card")
        assert await panel.locator("article[data-app]").count() == len(apps)
        assert await panel.locator("button[data-action]").count() == 0
        assert await panel.locator("details").count() == 0  # no replica logs for non-admins
        await _shot(page, artifacts, "viewer-apps")
        assert page.errors == []
    finally:
        await page.close()
        await server.disconnect()


async def test_sign_in_errors_and_the_token_stay_in_the_page(stack, tokens, browser, artifacts):
    page = await browser.new_page(viewport=LAPTOP)
    url = dashboard_url(stack.connection["server_url"], stack.connection["workspace"])
    try:
        await page.goto(url)
        await page.fill("#token", "not-a-token")
        await page.click("#login-button")
        await page.wait_for_selector(".message.error", timeout=30_000)
        assert "Sign-in failed" in await page.inner_text("#message")
        assert await page.is_visible("#login-form")
        await _shot(page, artifacts, "sign-in-failed")

        await page.fill("#token", tokens["admin"])
        await page.click("#login-button")
        await page.wait_for_selector("#services-table", timeout=30_000)
        assert tokens["admin"] not in page.url
        stored = await page.evaluate("sessionStorage.getItem('bioengine-dashboard-token')")
        assert stored == tokens["admin"]
        await page.reload()  # the tab keeps its sign-in
        await page.wait_for_selector("#services-table", timeout=30_000)
        await page.click("#logout")
        await page.wait_for_selector("#login-form", state="visible")
        assert await page.evaluate("sessionStorage.length") == 0
    finally:
        await page.close()


async def test_anonymous_viewers_see_public_datasets_only(stack, browser):
    page = await _page(browser, stack, None)
    try:
        assert await page.text_content("#whoami") == "anonymous"
        panel = await _panel(page, "datasets", "#datasets-table")
        shown = await panel.locator("#datasets-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.dataset)"
        )
        assert shown == ["open-data"]
    finally:
        await page.close()


async def test_stop_on_the_page_stops_the_app(stack, tokens, browser, artifacts):
    server, worker = await _api(stack, tokens["admin"])
    page = await _page(browser, stack, tokens["admin"])
    try:
        panel = await _panel(page, "apps", f'article[data-app="{APP_ID}"]')
        stop = panel.locator(f'article[data-app="{APP_ID}"] button[data-action="stop"]')
        await stop.click()
        assert await stop.inner_text() == "Click again to stop"  # a second click confirms
        await stop.click()
        await page.wait_for_selector(f'article[data-app="{APP_ID}"]', state="detached", timeout=90_000)
        apps = await worker.get_app_status()
        assert APP_ID not in apps or apps[APP_ID]["status"] == "NOT_RUNNING"
        assert "being removed" in await panel.inner_text() or "stopp" in await panel.inner_text()
        await _shot(page, artifacts, "admin-app-stopped")
        assert page.errors == []
    finally:
        await page.close()
        await server.disconnect()


async def test_the_page_finds_a_restarted_gateway_by_itself(stack, tokens, browser, artifacts):
    import psutil

    page = await _page(browser, stack, tokens["admin"])
    try:
        row = page.locator('#services-table tr[data-service="gateway"]')
        before = await row.inner_text()
        # The live gateway process (an earlier one may linger as a zombie until reaped).
        (gateway,) = faults.processes(stack, "gateway")
        gateway.send_signal(9)  # SIGKILL: the launcher starts a new one under a new client id
        await asyncio.to_thread(psutil.wait_procs, [gateway], 10)

        async def new_gateway_shown() -> bool:
            text = await page.locator('#services-table tr[data-service="gateway"]').inner_text()
            return text.split()[1] != before.split()[1] and "ok" in (
                await page.get_attribute("#message", "class")
            )

        await eventually(new_gateway_shown, 120, "the page on the restarted gateway")
        await _shot(page, artifacts, "admin-after-gateway-restart")
        assert page.errors == []
    finally:
        await page.close()
