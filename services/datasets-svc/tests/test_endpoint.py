"""The remembered HTTP port, without Hypha: real sockets, real files, real locks."""

import json
import logging
import socket

import pytest

from bioengine_common import ConfigurationError
from bioengine_datasets._endpoint import (
    bind_socket,
    claim_slot,
    open_http_socket,
    state_dir,
)

HOST = "127.0.0.1"


@pytest.fixture
def logger(caplog):
    caplog.set_level(logging.INFO, logger="test-endpoint")
    return logging.getLogger("test-endpoint")


def _open(tmp_path, logger, client_id="datasets-a"):
    return open_http_socket(HOST, 0, tmp_path, client_id, logger)


def _close(endpoint):
    endpoint.sock.close()
    if endpoint.slot is not None:
        endpoint.slot.release()


def test_a_picked_port_is_remembered_and_kept(tmp_path, logger):
    first = _open(tmp_path, logger)
    assert first.outcome == "new" and first.slot is not None
    record = json.loads(first.slot.path.read_text())
    assert record["port"] == first.port and record["client_id"] == "datasets-a"
    assert first.slot.path.parent == state_dir(tmp_path)
    _close(first)
    second = _open(tmp_path, logger)
    try:
        assert (second.outcome, second.port) == ("kept", first.port)
        assert json.loads(second.slot.path.read_text())["port"] == first.port
    finally:
        _close(second)
    # Written atomically: nothing but the port file, its lock and no temporary file left over.
    assert sorted(p.name for p in state_dir(tmp_path).iterdir()) == [
        "http-port-client-datasets-a.json",
        "http-port-client-datasets-a.lock",
    ]


def test_a_taken_port_is_replaced_and_the_new_one_remembered(tmp_path, logger, caplog):
    first = _open(tmp_path, logger)
    _close(first)
    squatter = bind_socket(HOST, first.port)  # something else took the port meanwhile
    try:
        second = _open(tmp_path, logger)
        try:
            assert second.outcome == "moved" and second.port != first.port
            assert second.remembered == first.port and f"port {first.port} is taken" in second.problem
            assert json.loads(second.slot.path.read_text())["port"] == second.port
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(f"remembered HTTP port {first.port}" in w and "taken" in w for w in warnings)
        finally:
            _close(second)
    finally:
        squatter.close()
    third = _open(tmp_path, logger)  # the new port is the one kept from now on
    try:
        assert (third.outcome, third.port) == ("kept", second.port)
    finally:
        _close(third)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "is not JSON"),
        (b"", "is not JSON"),
        (b"\xff\xfe\x00", "cannot be read"),
        (b'{"port": "8080"}', "holds no port"),
        (b'{"port": 0}', "holds no port"),
        (b'{"port": 70000}', "holds no port"),
        (b'{"port": true}', "holds no port"),
        (b"[8080]", "holds no port"),
    ],
)
def test_an_unusable_port_file_is_set_aside_and_replaced(tmp_path, logger, caplog, content, problem):
    directory = state_dir(tmp_path)
    directory.mkdir(parents=True)
    path = directory / "http-port-client-datasets-a.json"
    path.write_bytes(content)
    endpoint = _open(tmp_path, logger)
    try:
        assert endpoint.outcome == "moved" and problem in endpoint.problem
        assert json.loads(path.read_text())["port"] == endpoint.port
        assert (directory / "http-port-client-datasets-a.json.corrupt").read_bytes() == content
        assert any(
            str(path) in r.getMessage() and problem in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        )
    finally:
        _close(endpoint)


def test_replicas_with_their_own_client_ids_keep_their_own_ports(tmp_path, logger):
    a, b = _open(tmp_path, logger, "datasets-r0"), _open(tmp_path, logger, "datasets-r1")
    ports = {"datasets-r0": a.port, "datasets-r1": b.port}
    assert a.port != b.port
    _close(a)
    _close(b)
    for client_id in ("datasets-r1", "datasets-r0"):  # restarted the other way round
        endpoint = _open(tmp_path, logger, client_id)
        try:
            assert (endpoint.outcome, endpoint.port) == ("kept", ports[client_id])
        finally:
            _close(endpoint)


def test_replicas_with_random_client_ids_take_free_slots(tmp_path, logger):
    a, b = _open(tmp_path, logger, None), _open(tmp_path, logger, None)
    assert (a.slot.name, b.slot.name) == ("replica-0", "replica-1") and a.port != b.port
    _close(a)  # replica 0 restarts (a new random client id): it gets slot 0 and its port back
    again = _open(tmp_path, logger, None)
    try:
        assert (again.slot.name, again.port, again.outcome) == ("replica-0", a.port, "kept")
    finally:
        _close(again)
        _close(b)


def test_one_client_id_in_two_live_processes_is_refused(tmp_path):
    held = claim_slot(state_dir(tmp_path), "datasets-a")
    try:
        with pytest.raises(ConfigurationError, match="another live bioengine-datasets uses client id"):
            claim_slot(state_dir(tmp_path), "datasets-a", wait=0.3, poll=0.05)
    finally:
        held.release()
    claim_slot(state_dir(tmp_path), "datasets-a", wait=0).release()  # free again once released


def test_client_ids_never_share_a_file(tmp_path):
    names = set()
    for client_id in ("a/b", "a_b", "a b", "../x", "a" * 200, "a" * 201):
        slot = claim_slot(state_dir(tmp_path), client_id, wait=0)
        assert slot.path.parent == state_dir(tmp_path)
        names.add(slot.name)
        slot.release()
    assert len(names) == 6


def test_a_fixed_port_is_used_as_given_and_not_remembered(tmp_path, logger):
    probe = bind_socket(HOST, 0)
    port = probe.getsockname()[1]
    probe.close()
    endpoint = open_http_socket(HOST, port, tmp_path, "datasets-a", logger)
    try:
        assert (endpoint.outcome, endpoint.port, endpoint.slot) == ("fixed", port, None)
        assert not state_dir(tmp_path).exists()
        with pytest.raises(OSError):  # a fixed port that is taken stays an error
            open_http_socket(HOST, port, tmp_path, "datasets-b", logger)
    finally:
        endpoint.sock.close()


def test_the_port_binds_again_right_after_a_served_connection(tmp_path):
    # The server closes first, so its side of the connection sits in TIME_WAIT: without
    # SO_REUSEADDR binding the port again fails with EADDRINUSE for about a minute.
    server = bind_socket(HOST, 0)
    port = server.getsockname()[1]
    server.setblocking(True)
    client = socket.create_connection((HOST, port))
    accepted, _ = server.accept()
    accepted.sendall(b"bye")
    accepted.close()
    server.close()
    assert client.recv(3) == b"bye"
    client.close()
    again = bind_socket(HOST, port)
    again.close()
