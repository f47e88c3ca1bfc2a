"""The dashboard service's answers, without a server: files, config.json, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bioengine_dashboard import DASHBOARD_SERVICE_ID, STATIC_DIR, dashboard_service, dashboard_url, respond

CONFIG = {"workspace": "bioengine", "worker_service_id": "bioengine/gateway-1:bioengine-worker"}


def test_the_folder_and_index_html_answer_the_page():
    for path in ("", "/", "index.html", "/index.html"):
        answer = respond(path, CONFIG)
        assert answer["status"] == 200
        assert answer["headers"]["Content-Type"].startswith("text/html")
        assert b'src="./dashboard.js?_mode=random"' in answer["body"]


def test_built_files_with_their_types_and_a_policy_that_allows_only_own_files():
    js = respond("dashboard.js", CONFIG)
    css = respond("/dashboard.css", CONFIG)
    assert js["status"] == 200 and js["headers"]["Content-Type"].startswith("text/javascript")
    assert css["status"] == 200 and css["headers"]["Content-Type"].startswith("text/css")
    policy = js["headers"]["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert js["headers"]["X-Content-Type-Options"] == "nosniff"


def test_config_json_is_the_given_config():
    answer = respond("config.json", CONFIG)
    assert answer["status"] == 200 and json.loads(answer["body"]) == CONFIG


@pytest.mark.parametrize(
    "path",
    [
        "../_serve.py",
        "../../bioengine_dashboard/__init__.py",
        "/etc/passwd",
        "nothing.js",
        ".hidden",
        "static/../x",
    ],
)
def test_nothing_outside_the_built_files(path):
    answer = respond(path, CONFIG)
    assert answer["status"] == 404, path
    assert b"no such file in the dashboard" in answer["body"]


def test_only_reads_are_allowed():
    answer = respond("index.html", CONFIG, method="POST")
    assert answer["status"] == 405 and b"read-only" in answer["body"]


def test_the_registered_service_is_public_and_serves_index_and_other_paths(tmp_path: Path):
    (tmp_path / "index.html").write_text("<p>page</p>")
    (tmp_path / "a.js").write_text("let a;")
    asked = []

    def config():
        asked.append(1)
        return CONFIG

    service = dashboard_service(config, static_dir=tmp_path)
    assert service["id"] == DASHBOARD_SERVICE_ID and service["type"] == "functions"
    assert service["config"]["visibility"] == "public"
    index = asyncio.run(service["index"]({"method": "GET", "path": "/"}))
    other = asyncio.run(service["default"]({"method": "GET", "function_path": "/a.js"}))
    conf = asyncio.run(service["default"]({"method": "GET", "function_path": "/config.json"}))
    assert index["body"] == b"<p>page</p>" and other["body"] == b"let a;"
    assert json.loads(conf["body"]) == CONFIG and asked  # asked on each request: a restart's new id


def test_dashboard_url():
    assert dashboard_url("http://127.0.0.1:9527/", "bioengine") == (
        "http://127.0.0.1:9527/bioengine/apps/bioengine-dashboard/"
    )
    assert dashboard_url("ws://h:1", "w").startswith("http://h:1/w/apps/")


def test_the_built_page_is_in_the_package():
    for name in ("index.html", "dashboard.js", "dashboard.css", "build-info.json"):
        assert (STATIC_DIR / name).is_file(), name
