"""run_code's driver-side decisions without Ray or Hypha: when a caller counts as gone, and what
the caller is told about a retry."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bioengine_cluster._run_code import CallerWatch, RunCodeLog, absence, retry_notice


@pytest.mark.parametrize(
    ("since", "present", "now", "expected"),
    [
        (None, True, 100.0, (None, False)),  # listed: not missing
        (90.0, True, 100.0, (None, False)),  # listed again: the absence ends
        (None, False, 100.0, (100.0, False)),  # first miss: the grace starts
        (90.0, False, 100.0, (90.0, False)),  # missing 10 s of 15
        (85.0, False, 100.0, (85.0, True)),  # missing 15 s: gone
        (80.0, None, 100.0, (80.0, False)),  # the listing failed: no evidence, never gone by it
        (None, None, 100.0, (None, False)),
    ],
)
def test_absence(since, present, now, expected):
    assert absence(since, present, now, 15.0) == expected


def test_absence_with_no_grace_is_gone_at_the_first_miss():
    assert absence(None, False, 5.0, 0.0) == (5.0, True)


def test_retry_notice_names_the_attempts_the_lost_worker_and_the_jump():
    text = retry_notice(1, 0, {"node_id": "abcdef0123456789", "slurm_job_id": "42"}, 3)
    assert text.startswith("[bioengine] run_code: Ray retried the task: attempt 2 runs after attempt 1")
    assert "Ray node abcdef012345, SLURM job 42" in text
    assert "The 3 line(s) above came from attempt 1" in text and "whole output" in text
    quiet = retry_notice(2, 1, None, 0)
    assert "attempt 3 runs after attempt 2 was lost with its worker (a Ray worker)." in quiet
    assert "line(s) above" not in quiet
    first = retry_notice(1, None, None, 0)
    assert "attempt 2" in first and "before it printed anything" in first


async def test_caller_watch_returns_once_the_client_stays_unlisted():
    listings = [["ws/a", "ws/caller"], ["ws/a"], RuntimeError("hypha down"), ["ws/a"], ["ws/a"]]
    asked: list[str] = []

    async def list_clients(workspace: str) -> list[dict[str, str]]:
        asked.append(workspace)
        item = listings.pop(0) if listings else ["ws/a"]
        if isinstance(item, Exception):
            raise item
        return [{"id": client} for client in item]

    watch = CallerWatch(list_clients, interval_s=0.01, grace_s=0.02, logger=logging.getLogger("t"))
    reason = await asyncio.wait_for(watch.wait_gone(["ws/caller"]), 5)
    assert "the caller ws/caller disconnected" in reason and set(asked) == {"ws"}
    assert len(asked) >= 4  # listed, missing, failed (no evidence), missing past the grace


async def test_caller_watch_never_fires_while_listings_fail():
    async def list_clients(workspace: str) -> list[dict[str, str]]:
        raise PermissionError(f"Permission denied for workspace {workspace}")

    watch = CallerWatch(list_clients, interval_s=0.01, grace_s=0.0, logger=logging.getLogger("t"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watch.wait_gone(["other-ws/caller"]), 0.3)


def test_run_code_log_keeps_running_and_recent_calls():
    log = RunCodeLog(kept=2)
    runs = [log.start("admin", [f"ws/c{i}"]) for i in range(3)]
    assert [r["id"] for r in log.status()["running"]] == [r["id"] for r in runs]
    for run in runs:
        log.finish(run, "cancelled", "the caller ws/c disconnected")
    status = log.status()
    assert status["running"] == [] and [r["id"] for r in status["recent"]] == [runs[2]["id"], runs[1]["id"]]
    assert status["recent"][0]["state"] == "cancelled" and status["recent"][0]["ended_at"]


async def test_a_cancelled_caller_watch_always_ends():
    """Cancelling the watch (its run_code ended) ends it, even when the cancellation arrives just
    as a listing returns (Python 3.11's wait_for dropped such a cancellation: the watch then
    polled forever; before the fix about 4 in 10 of these cancellations were lost)."""

    async def list_clients(workspace: str) -> list[dict[str, str]]:
        raise PermissionError(f"Permission denied for workspace {workspace}")

    quiet = logging.getLogger("t.quiet")
    quiet.setLevel(logging.ERROR)
    lost = 0
    for i in range(100):
        watch = CallerWatch(list_clients, interval_s=0.0005, grace_s=0.0, logger=quiet)
        task = asyncio.create_task(watch.wait_gone(["other-ws/caller"]))
        await asyncio.sleep(0.003 + (i % 7) * 0.0003)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:
            lost += 1
            task.cancel()
    assert lost == 0, f"{lost} of 100 cancelled watches kept running"
