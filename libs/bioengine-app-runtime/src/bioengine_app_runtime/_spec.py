"""What apps-svc hands to the builder: one app's deployment spec, plain JSON.

The spec is the ``args`` of the app's Serve config, so it must be deterministic (the same
request gives the same spec, and Serve then changes nothing) and must never hold a secret:
secret values and tokens travel through Ray's GCS key-value store (:mod:`.kv`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "PROXY_CONFIG_FIELDS",
    "PROXY_DEPLOYMENT",
    "App06",
    "AppSpec",
    "DeploymentRef",
    "MethodSpec",
    "ProxySpec",
]

#: Name of the deployment that exposes an app as a Hypha service (the app's ingress).
PROXY_DEPLOYMENT = "BioEngineProxy"
#: Fields of a ProxySpec that a running proxy replica takes on in place (Serve's user_config and
#: the proxy's reconfigure), so changing them keeps the replica and the app's Hypha service id.
PROXY_CONFIG_FIELDS = ("authorized_users", "max_ongoing_requests", "methods", "refuse_when_full")


class DeploymentRef(BaseModel):
    """One ``"<file stem>:<ClassName>"`` entry of a manifest."""

    module: str
    class_name: str

    @classmethod
    def parse(cls, entry: str) -> DeploymentRef:
        module, sep, class_name = entry.partition(":")
        if not sep or not module or not class_name:
            raise ValueError(f"deployment '{entry}' must look like '<file stem>:<ClassName>'")
        return cls(module=module, class_name=class_name)

    def __str__(self) -> str:
        return f"{self.module}:{self.class_name}"


class MethodSpec(BaseModel):
    """A schema method of the entry deployment, as exposed on Hypha."""

    name: str
    accepts_context: bool = False
    json_schema: dict[str, Any] | None = Field(None, description="hypha-rpc's schema of the method.")


class App06(BaseModel):
    """The part of an AppSpec only a manifest-0.6.0 app has: what the discovery task found."""

    entry: str = Field(description="'module.sub:Class' of the manifest.")
    spec: dict[str, Any] = Field(description="bioengine.composition.introspect_app's spec.")
    init_kwargs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="__init__ arguments by 'module:qualname' (validated)."
    )
    num_gpus: dict[str, float] = Field(
        default_factory=dict, description="Sized num_gpus by 'module:qualname'."
    )
    sdk_version: str = Field("", description="Version of the bioengine SDK that read the spec.")

    def own(self, key: str) -> dict[str, Any]:
        """What one deployment's replicas are made of (for its Serve version)."""
        return {
            "entry": self.entry,
            "deployment": self.spec["deployments"].get(key),
            "kwargs": self.init_kwargs.get(key),
            "num_gpus": self.num_gpus.get(key),
        }


class AppSpec(BaseModel):
    application_id: str
    artifact_id: str
    version: str | None = None
    code_dir: str = Field(description="Absolute path of the app's files on a filesystem every node sees.")
    home_dir: str = Field(description="HOME of the app's replicas.")
    deployments: list[str] = Field(description="'<file stem>:<ClassName>', the entry deployment first.")
    init_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Init kwargs per class.")
    env_vars: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Plain env vars per class ('*' for all)."
    )
    secret_env_names: dict[str, list[str]] = Field(
        default_factory=dict, description="Secret env var names per class; values are in the KV store."
    )
    disable_gpu: bool = False
    default_num_cpus: float = 0.1
    max_ongoing_requests: int = 10
    authorized_users: dict[str, list[str]] = Field(default_factory=lambda: {"*": ["*"]})
    methods: list[MethodSpec] = Field(default_factory=list)
    server_url: str
    workspace: str
    datasets_service_id: str = "bioengine-datasets"
    services_users: list[str] = Field(
        default_factory=list,
        description="Hypha users the worker's services run as: the app looks up the datasets "
        "service only among the services they registered.",
    )
    #: Bumped by apps-svc to force a rebuild of an otherwise unchanged app (auto_redeploy).
    redeploy: int = 0
    #: Bumped when secret values change, so replicas restart and read them.
    secrets_revision: int = 0
    scaling: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per class: {num_replicas: n} or {autoscaling_config: {...}} (deploy_app's scaling).",
    )
    proxy_memory_in_gb: float | None = Field(None, description="Memory the proxy replica reserves, GiB.")
    debug: bool = Field(False, description="DEBUG log level for the app's proxy.")
    #: A manifest-0.6.0 app (``deployments`` then lists its classes' 'module:qualname', the entry
    #: first); None for the older format.
    app06: App06 | None = None

    def refs(self) -> list[DeploymentRef]:
        return [DeploymentRef.parse(entry) for entry in self.deployments]


class ProxySpec(BaseModel):
    """What the app's ``BioEngineProxy`` is made of: its init argument and its Serve version.

    Only what the proxy uses, so that an update that does not concern it (a deployment's kwargs,
    env vars or code with the same methods) leaves its replica, and the app's Hypha service id,
    as they are. The :data:`PROXY_CONFIG_FIELDS` also travel as Serve's ``user_config`` and are
    left out of the version: access rules, the call limit and the methods change in place.
    """

    application_id: str
    artifact_id: str
    server_url: str
    workspace: str
    max_ongoing_requests: int = 10
    authorized_users: dict[str, list[str]] = Field(default_factory=lambda: {"*": ["*"]})
    methods: list[MethodSpec] = Field(default_factory=list)
    #: Refuse a call at once when max_ongoing_requests calls are running (0.6.0 apps, as the
    #: public worker's proxy does); otherwise it waits for a free slot.
    refuse_when_full: bool = False
    #: auto_redeploy rebuilds everything, the proxy included.
    redeploy: int = 0
    proxy_memory_in_gb: float | None = None
    debug: bool = False

    @classmethod
    def of(cls, spec: AppSpec) -> ProxySpec:
        return cls.model_validate(spec.model_dump(include=set(cls.model_fields)))

    def user_config(self) -> dict[str, Any]:
        """The part a running replica takes on in place (Serve's ``user_config``)."""
        return self.model_dump(mode="json", include=set(PROXY_CONFIG_FIELDS))
