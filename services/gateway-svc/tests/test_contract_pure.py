"""GatewayService's methods are built from their contracts in bioengine_common.contracts."""

from bioengine_common.contracts import WORKER, check_implementations
from bioengine_gateway._service import GatewayService


def test_each_method_of_the_public_api_implemented_here_matches_its_contract():
    assert WORKER.of_service("gateway"), "this service implements part of the public API"
    assert check_implementations(GatewayService, WORKER, "gateway") == []
