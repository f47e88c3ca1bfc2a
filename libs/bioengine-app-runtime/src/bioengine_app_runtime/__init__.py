"""What BioEngine apps run with inside Ray.

- :func:`build` (``bioengine_app_runtime:build``): Serve's app builder for an app's spec;
- :class:`BioEngineProxy`: the ingress deployment that registers the app as a Hypha service;
- :class:`AppSpec`: the spec apps-svc writes into the app's Serve config (:class:`App06`: a
  manifest-0.6.0 app's part, found by :func:`bioengine_app_runtime.app06.discover` inside Ray);
- :mod:`bioengine_app_runtime.deployer` (``AppDeployer``, the actor apps-svc asks to build and
  submit an app) and :mod:`bioengine_app_runtime.kv` (the apps' keys of Ray's KV store and
  ``RayKV``, apps-svc's view of them): the public modules apps-svc uses; :mod:`bioengine_app_runtime.app06` runs a 0.6.0
  app's discovery task (``discover``) and builds it.

Nothing here runs in a service process except the plain data classes.
"""

from ._datasets import AppDatasets, DatasetsUnavailable
from ._spec import PROXY_DEPLOYMENT, App06, AppSpec, DeploymentRef, MethodSpec, ProxySpec

__all__ = [
    "PROXY_DEPLOYMENT",
    "App06",
    "AppDatasets",
    "AppSpec",
    "DatasetsUnavailable",
    "DeploymentRef",
    "MethodSpec",
    "ProxySpec",
    "build",
]


def build(args: dict) -> object:
    """Serve app builder (import path ``bioengine_app_runtime:build``)."""
    from ._builder import build as _build

    return _build(args)
