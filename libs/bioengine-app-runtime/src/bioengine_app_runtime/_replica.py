"""Inside an app replica: secrets, HOME and the wrapper around each user deployment class."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import kv
from ._datasets import AppDatasets

__all__ = ["prepare_replica", "wrap_deployment_class"]


def prepare_replica(application_id: str, class_name: str, home_dir: str) -> None:
    """Set the secret env vars of ``class_name`` from the KV store and move into HOME.

    Secrets are never in the Serve config or the runtime_env (both are shown in status and
    dashboards); each replica reads them when it starts.
    """
    secrets = kv.get_json(kv.secrets_key(application_id)) or {}
    env = secrets.get("env") or {}
    for scope in ("*", class_name):
        for name, value in (env.get(scope) or {}).items():
            os.environ[name] = str(value)
    if secrets.get("hypha_token"):
        os.environ["HYPHA_TOKEN"] = str(secrets["hypha_token"])
    home = Path(home_dir)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    os.chdir(home)


def wrap_deployment_class(user_class: type, application_id: str, home_dir: str) -> type:
    """A subclass of ``user_class`` whose ``__init__`` prepares the replica first.

    Before the user's ``__init__`` runs, ``self.bioengine_datasets`` is an :class:`AppDatasets`.

    The subclass keeps the user's name, methods and health check; it is shipped by value, the
    user's class as it always is for ``@serve.deployment`` classes.
    """
    class_name = user_class.__name__
    user_init = user_class.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        prepare_replica(application_id, class_name, home_dir)
        self.bioengine_datasets = AppDatasets(application_id)
        user_init(self, *args, **kwargs)

    if _is_async(user_init):

        async def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
            prepare_replica(application_id, class_name, home_dir)
            self.bioengine_datasets = AppDatasets(application_id)
            await user_init(self, *args, **kwargs)

    wrapped = type(class_name, (user_class,), {"__init__": __init__, "__doc__": user_class.__doc__})
    wrapped.__module__ = user_class.__module__
    wrapped.__qualname__ = user_class.__qualname__
    return wrapped


def _is_async(function: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(function)
