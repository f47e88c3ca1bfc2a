"""Choosing an internal service only among those registered by trusted users (the real-server
case is in tests/integration/test_abuse.py)."""

import pytest

from bioengine_common import ServiceUnavailable, trusted_service_id


class Listing:
    """The one call trusted_service_id makes, answering from a fixed list."""

    def __init__(self, services):
        self.services = services
        self.queries = []

    async def list_services(self, query):
        self.queries.append(query)
        return [s for s in self.services if s["id"].split(":", 1)[1].split("@")[0] == query["service_id"]]


def svc(full_id, owner):
    return {"id": full_id, "config": {"created_by": {"id": owner}}}


SERVICES = [
    svc("ws/cluster-1:bioengine-cluster", "bioengine-services"),
    svc("ws/evil:bioengine-cluster", "app-user"),
    svc("ws/cluster-2:bioengine-cluster", "bioengine-services"),
    svc("ws/other:bioengine-apps", "bioengine-services"),
]


async def test_only_trusted_registrations_are_chosen():
    server = Listing(SERVICES)
    chosen = {
        await trusted_service_id(server, "ws", "bioengine-cluster", {"bioengine-services"}) for _ in range(50)
    }
    assert chosen == {"ws/cluster-1:bioengine-cluster", "ws/cluster-2:bioengine-cluster"}
    assert server.queries[0] == {"workspace": "ws", "service_id": "bioengine-cluster"}


async def test_a_client_qualified_id_picks_that_client_only():
    server = Listing(SERVICES)
    assert (
        await trusted_service_id(server, "ws", "cluster-2:bioengine-cluster", {"bioengine-services"})
        == "ws/cluster-2:bioengine-cluster"
    )
    with pytest.raises(ServiceUnavailable, match=r"only by users this worker does not trust \(app-user\)"):
        await trusted_service_id(server, "ws", "evil:bioengine-cluster", {"bioengine-services"})


async def test_impostors_only_or_nothing_is_refused_with_the_reason():
    server = Listing([SERVICES[1]])
    with pytest.raises(ServiceUnavailable, match="does not trust"):
        await trusted_service_id(server, "ws", "bioengine-cluster", {"bioengine-services"})
    with pytest.raises(ServiceUnavailable, match="not found"):
        await trusted_service_id(Listing([]), "ws", "bioengine-cluster", {"bioengine-services"})
    # An empty trust set trusts nobody.
    with pytest.raises(ServiceUnavailable):
        await trusted_service_id(Listing(SERVICES), "ws", "bioengine-cluster", set())
