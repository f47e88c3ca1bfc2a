"""The committed build was made from the committed sources (no Node.js needed to check)."""

from __future__ import annotations

import json
from pathlib import Path

from bioengine_dashboard import STATIC_DIR, source_digest

WEB = Path(__file__).resolve().parents[1] / "web"


def test_the_committed_build_matches_the_sources():
    info = json.loads((STATIC_DIR / "build-info.json").read_text())
    assert info["sources_sha256"] == source_digest(WEB), (
        "libs/bioengine-dashboard/web changed since the page was built: run "
        "`npm ci && npm run build` there and commit src/bioengine_dashboard/static"
    )


def test_the_bundle_carries_the_npm_packages_of_the_lock():
    info = json.loads((STATIC_DIR / "build-info.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    declared = lock["packages"][""]["dependencies"]
    for name, version in declared.items():
        assert info["packages"][name] == version, name
