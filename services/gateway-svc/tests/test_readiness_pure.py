"""Why the worker is not ready: the gateway's ``not_ready_reasons`` from the services' status."""

from bioengine_gateway._service import not_ready_reasons


def _services(**overrides):
    services = {
        "cluster": {
            "service_id": "bioengine-cluster",
            "up": True,
            "status": {"ready": True, "ray_cluster": {}},
        },
        "apps": {"service_id": "bioengine-apps", "up": True, "status": {"ready": True, "ray_error": None}},
        "datasets": {"service_id": "bioengine-datasets", "up": True, "status": {"ready": True}},
    }
    for name, entry in overrides.items():
        services[name] = {**services[name], **entry}
    return services


def test_a_ready_worker_has_no_reason():
    assert not_ready_reasons(True, _services()) == []


def test_each_cause_is_one_line_naming_its_service():
    services = _services(
        cluster={"status": {"ready": False, "ray_cluster": {"error": "starting the Ray cluster"}}},
        apps={
            "status": {
                "ready": False,
                "ray_error": "not connected to the Ray cluster yet: the Ray cluster is not ready: "
                "starting the Ray cluster (retrying every 1 s)",
            }
        },
        datasets={"up": False, "error": "KeyError: Service not found: bioengine-datasets", "status": None},
    )
    assert not_ready_reasons(True, services) == [
        "cluster: starting the Ray cluster",
        "apps: not connected to the Ray cluster yet: the Ray cluster is not ready: starting the Ray "
        "cluster (retrying every 1 s)",
        "datasets: bioengine-datasets is not reachable: KeyError: Service not found: bioengine-datasets",
    ]


def test_reasons_without_details_still_say_something():
    services = _services(
        cluster={"status": {"ready": False, "ray_cluster": {"error": None}}},
        apps={"status": {"ready": False}},
        datasets={"up": False, "error": None, "status": None},
    )
    reasons = not_ready_reasons(False, services)
    assert reasons[0] == "gateway: not registered yet"
    assert reasons[1] == "cluster: connected to the Ray head, no sample of the cluster yet"
    assert reasons[2] == "apps: registered but not ready yet"
    assert reasons[3] == "datasets: bioengine-datasets is not reachable: not checked yet"
