"""The BioEngine dashboard: a static page that reads the public ``bioengine-worker`` API with the
viewer's own token, and the Hypha HTTP service (``type: "functions"``) that serves it.

The page is built from ``web/`` with npm + esbuild into ``static/`` (committed), so serving it
needs no Node.js. :func:`dashboard_service` is what the gateway registers; Hypha serves it at
``{server_url}/{workspace}/apps/bioengine-dashboard/``.
"""

from ._serve import (
    DASHBOARD_SERVICE_ID,
    STATIC_DIR,
    dashboard_service,
    dashboard_url,
    respond,
    source_digest,
)

__all__ = [
    "DASHBOARD_SERVICE_ID",
    "STATIC_DIR",
    "dashboard_service",
    "dashboard_url",
    "respond",
    "source_digest",
]
