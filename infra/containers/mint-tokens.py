"""One-shot start of the compose stack: the JWT secret and a token per service, in /secrets.

Makes the secret once (``/secrets/jwt_secret``, mode 0600; the server reads it through
``HYPHA_JWT_SECRET_FILE``), then mints at every start, as the launcher does: one token per
service for the services' own user (admin for apps, which makes a token per app), and an admin
token for the user ``bioengine-admin``, printed once for the operator (``compose logs tokens``)
and kept in ``/secrets/admin.token``.
"""

import os
import secrets
import sys
from pathlib import Path

from bioengine_common import SERVICES_USER, mint_token

SECRETS = Path(os.environ.get("BIOENGINE_SECRETS_DIR", "/secrets"))
WORKSPACE = os.environ.get("BIOENGINE_WORKSPACE", "bioengine")
EXPIRES_IN = float(os.environ.get("BIOENGINE_TOKEN_EXPIRES_IN", 30 * 24 * 3600))


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def main() -> int:
    secret_file = SECRETS / "jwt_secret"
    if not secret_file.exists():
        _write(secret_file, secrets.token_hex(32))
    secret = secret_file.read_text().strip()
    for service in ("cluster", "apps", "datasets", "gateway"):
        permission = "admin" if service == "apps" else "read_write"
        token = mint_token(secret, SERVICES_USER, WORKSPACE, permission, expires_in=EXPIRES_IN)
        _write(SECRETS / f"{service}.token", token)
    admin = mint_token(secret, "bioengine-admin", WORKSPACE, "admin", expires_in=EXPIRES_IN)
    _write(SECRETS / "admin.token", admin)
    print(f"workspace: {WORKSPACE}\nadmin token (also in the secrets volume, admin.token):\n{admin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
