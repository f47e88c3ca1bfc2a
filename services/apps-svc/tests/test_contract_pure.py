"""AppsService's methods are built from their contracts in bioengine_common.contracts."""

from bioengine_apps._service import AppsService
from bioengine_common.contracts import WORKER, check_implementations


def test_each_method_of_the_public_api_implemented_here_matches_its_contract():
    assert WORKER.of_service("apps"), "this service implements part of the public API"
    assert check_implementations(AppsService, WORKER, "apps") == []
