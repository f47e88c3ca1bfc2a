"""Pure parts of how apps outlive the Ray head: the state on disk and the restart decisions."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from typing import Any

import pytest

from bioengine_app_runtime import AppSpec
from bioengine_apps._state import (
    AppRecord,
    after_head_restart,
    format_time,
    plan_reconcile,
    session_started_at,
    spec_hash,
    unavailable_message,
)
from bioengine_apps._store import StateStore


def record(app_id: str, **fields: Any) -> AppRecord:
    spec = AppSpec(
        application_id=app_id,
        artifact_id=f"ws/{app_id}",
        code_dir=f"/apps/{app_id}/code",
        home_dir=f"/apps/{app_id}/home",
        deployments=["demo_app:DemoApp"],
        server_url="http://hypha.test",
        workspace="ws",
    ).model_dump(mode="json")
    rec = AppRecord(application_id=app_id, artifact_id=f"ws/{app_id}", spec=spec, **fields)
    rec.applied_hash = spec_hash(spec)
    return rec


# ---- the store -----------------------------------------------------------------------------------


def test_store_round_trips_records_secrets_and_the_cluster(tmp_path):
    store = StateStore(tmp_path / "apps-state")
    rec = record("app-a", auto_redeploy=True, application_kwargs={"DemoApp": {"x": 1}})
    store.save_record(rec)
    store.save_secrets("app-a", {"env": {"*": {"KEY": "v"}}, "proxy_token": "t"})
    store.save_cluster({"session": "session_x"})
    again = StateStore(tmp_path / "apps-state")
    records, problems = again.load_records()
    assert problems == [] and records == {"app-a": rec}
    assert again.load_secrets("app-a") == {"env": {"*": {"KEY": "v"}}, "proxy_token": "t"}
    assert again.load_cluster() == {"session": "session_x"}


def test_store_files_are_private_and_no_temporary_file_is_left(tmp_path):
    store = StateStore(tmp_path / "apps-state")
    store.save_record(record("app-a"))
    store.save_secrets("app-a", {"hypha_token": "secret"})
    store.save_secrets("app-a", {"hypha_token": "newer"})
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    files = sorted(p for p in store.root.rglob("*") if p.is_file())
    assert [p.name for p in files] == ["app-a.json", "app-a.json"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert store.load_secrets("app-a") == {"hypha_token": "newer"}


def test_store_delete_removes_record_and_secrets(tmp_path):
    store = StateStore(tmp_path / "s")
    store.save_record(record("app-a"))
    store.save_secrets("app-a", {"x": 1})
    store.delete("app-a")
    store.delete("app-a")  # twice is fine
    assert store.load_records() == ({}, []) and store.load_secrets("app-a") is None


def test_store_names_an_unreadable_record_and_loads_the_others(tmp_path):
    store = StateStore(tmp_path / "s")
    store.save_record(record("app-a"))
    (store.root / "records" / "broken.json").write_text("{not json")
    records, problems = store.load_records()
    assert list(records) == ["app-a"]
    assert len(problems) == 1 and "broken.json" in problems[0]


@pytest.mark.parametrize("app_id", ["../x", "a/b", "", "UPPER"])
def test_store_refuses_ids_that_are_not_app_ids(tmp_path, app_id):
    with pytest.raises(ValueError, match="not an application id"):
        StateStore(tmp_path / "s").save_secrets(app_id, {})


def test_store_on_a_fresh_dir_is_empty(tmp_path):
    store = StateStore(tmp_path / "new")
    assert store.load_records() == ({}, []) and store.load_cluster() == {}
    assert store.load_secrets("app-a") is None
    (tmp_path / "new" / "cluster.json").write_text(json.dumps(["not", "a", "dict"]))
    assert store.load_cluster() == {}


# ---- deciding what a new head needs ------------------------------------------------------------------


def test_session_names_give_the_head_start_time():
    started = session_started_at("session_2026-11-27_12-34-56_123456_4242")
    assert started == datetime(2026, 11, 27, 12, 34, 56, 123456).timestamp()
    assert session_started_at("something-else") is None and session_started_at(None) is None


def test_same_or_unknown_session_redeploys_nothing():
    records = {"app-a": record("app-a")}
    assert not after_head_restart(records, "session_1", "session_1", 0.0, now=0.0).restarted
    first = after_head_restart(records, None, "session_1", 0.0, now=0.0)
    assert not first.restarted and first.redeploy == {} and first.decisions == []


def test_new_session_redeploys_every_deployed_app_and_says_when():
    records = {"app-a": record("app-a"), "app-b": record("app-b", auto_redeploy=True, gave_up="gave up")}
    result = after_head_restart(records, "session_old", "session_new", 1_800_000_000.0, now=0.0)
    note = f"redeployed after the Ray head restarted at {format_time(1_800_000_000.0)}"
    assert result.restarted and result.redeploy == {"app-a": note, "app-b": note}
    assert "2027-01-15T08:00:00+00:00" in note
    assert result.decisions[0].message.startswith("Ray head restarted at 2027-01-15T08:00:00+00:00")
    assert "redeploying 2 app(s): app-a, app-b" in result.decisions[0].message
    assert "session_new" in result.decisions[0].message and "session_old" in result.decisions[0].message
    assert result.decisions[0].action == "head_restarted"
    assert result.decisions[0].inputs == {
        "session": "session_new",
        "previous_session": "session_old",
        "head_started_at": 1_800_000_000.0,
    }


def test_an_app_whose_build_failed_is_not_redeployed_after_a_restart():
    failed = record("app-f")
    failed.failed_hash, failed.applied_hash = spec_hash(failed.spec), None
    result = after_head_restart({"app-f": failed, "app-a": record("app-a")}, "s1", "s2", None, now=0.0)
    assert list(result.redeploy) == ["app-a"]
    assert "an unknown time" in result.redeploy["app-a"]
    assert any("app-f: its build had failed" in d.message for d in result.decisions)


def test_the_reconciler_then_deploys_the_apps_missing_from_the_new_serve():
    records = {"app-a": record("app-a"), "app-b": record("app-b")}
    restart = after_head_restart(records, "s1", "s2", 0.0, now=0.0)
    result = plan_reconcile(records, {}, now=0.0)  # a new head's Serve has no apps
    assert sorted(result.deploy) == sorted(restart.redeploy) == ["app-a", "app-b"]


def test_unavailable_message_says_since_when_and_what_was_last_seen():
    down = unavailable_message("gone", 1_800_000_000.0, True, "RUNNING", 1_799_999_990.0)
    assert down.startswith("Ray head down since 2027-01-15T08:00:00+00:00 (gone)")
    assert "last seen RUNNING at 2027-01-15T07:59:50+00:00" in down
    assert down.endswith("redeploys the app when the head is back")
    away = unavailable_message("", None, False, None, None)
    assert away == "Ray cluster not reachable; the app may still be serving"


def test_head_probe_tells_a_refused_port_from_a_listening_one():
    import socket

    from bioengine_apps._service import _RETRYING, _accepts

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert _accepts(f"127.0.0.1:{port}") == (True, "")
        assert _accepts(f"ray://127.0.0.1:{port}")[0] is True
    alive, reason = _accepts(f"127.0.0.1:{port}")  # closed now: nothing listens
    assert alive is False and "refuses connections" in reason
    assert _accepts("no-port-here")[0] is False
    assert _RETRYING.sub("", "not ready: down (retrying in 4 s)") == "not ready: down"
