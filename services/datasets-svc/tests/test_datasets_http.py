"""bioengine-datasets end to end: real Hypha tokens, real HTTP, real zarr."""

import asyncio
import json
import os
import re
import time
import urllib.parse

import aiohttp
import numpy as np
import pytest
import zarr

from bioengine_common import SERVICES_USER, connect
from bioengine_common.testing import ADMIN_USER, launch_service, wait_for_service
from bioengine_datasets_client import DatasetAccessError, HttpZarrStore, open_dataset
from bioengine_datasets_client.batch import split_answer

pytestmark = pytest.mark.integration

ALICE = "alice@example.org"


def _write(folder, manifest):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(manifest)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _write(root / "private", f"name: Private\ndescription: only alice\nauthorized_users: [{ALICE}]\n")
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 60000, size=(4, 256, 256), dtype="uint16")
    sharded = zarr.create_array(store=root / "private" / "sharded.zarr", shape=volume.shape, dtype="uint16",
                                chunks=(1, 64, 64), shards=(1, 256, 256))  # fmt: skip
    sharded[:] = volume
    v2 = zarr.create_array(
        store=root / "private" / "v2.zarr",
        shape=volume.shape,
        dtype="uint16",
        chunks=(1, 100, 100),
        zarr_format=2,
    )
    v2[:] = volume
    group = zarr.open_group(root / "private" / "group.zarr", mode="w")
    group.create_array("raw", shape=(64, 64), dtype="float32")[:] = np.arange(
        64 * 64, dtype="float32"
    ).reshape(64, 64)
    zarr.consolidate_metadata(root / "private" / "group.zarr")
    np.save(root / "private" / "volume.npy", volume)
    (root / "private" / "blob.bin").write_bytes(bytes(range(256)) * 4)
    _write(root / "open", "name: Open\npublic: true\n")
    (root / "open" / "hello.txt").write_text("hello")
    _write(root / "members", "name: Members\nauthorized_users: '*'\n")
    (root / "members" / "m.txt").write_text("members only")
    _write(root / "broken", "authorized_users: {a: 1}\n")
    (root.parent / "outside.txt").write_text("top secret")
    os.symlink(root.parent / "outside.txt", root / "private" / "escape")
    return root


@pytest.fixture(scope="module")
def datasets_process(hypha_server, data_dir, tmp_path_factory):
    service = launch_service(
        "datasets", hypha_server, tmp_path_factory.mktemp("datasets-svc"),
        "--data-dir", str(data_dir), "--scan-interval", "0.5", "--client-id", "datasets-http",
    )  # fmt: skip
    yield service
    service.stop()


@pytest.fixture
async def datasets(datasets_process, admin_client):
    info = await wait_for_service(admin_client, "datasets-http:bioengine-datasets", timeout=60)
    return await admin_client.get_service(info["id"])


@pytest.fixture
def tokens(hypha_server):
    return {
        "admin": hypha_server.mint(ADMIN_USER, "admin"),
        "alice": hypha_server.mint("alice", "read", email=ALICE),
        "bob": hypha_server.mint("bob", "read", email="bob@example.org"),
        "anonymous": None,
    }


async def _get(url, token=None, headers=None, params=None):
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, params=params) as response,
    ):
        return response.status, await response.read(), response.headers


@pytest.fixture
async def http_url(datasets):
    return (await datasets.get_status())["http_url"]


NOT_READABLE = "dataset '{id}' not found or not readable with this token"
EXPECTED_VISIBLE = {
    "admin": {"private", "open", "members"},
    "alice": {"private", "open", "members"},
    "bob": {"open", "members"},
    "anonymous": {"open"},
}


@pytest.mark.parametrize("who", ["admin", "alice", "bob", "anonymous"])
async def test_access_matrix_over_http(http_url, tokens, who):
    token = tokens[who]
    status, body, _ = await _get(f"{http_url}/datasets", token)
    assert status == 200 and set(json.loads(body)) == EXPECTED_VISIBLE[who]
    for dataset, path in (("private", "blob.bin"), ("open", "hello.txt"), ("members", "m.txt")):
        status, body, _ = await _get(f"{http_url}/data/{dataset}/{path}", token)
        info_status, _, _ = await _get(f"{http_url}/datasets/{dataset}", token)
        listing_status, _, _ = await _get(f"{http_url}/data/{dataset}", token, params={"list": "1"})
        if dataset in EXPECTED_VISIBLE[who]:
            assert (status, info_status, listing_status) == (200, 200, 200), (who, dataset)
        else:
            assert status in (401, 403) and info_status in (401, 403) and listing_status in (401, 403), (
                who,
                dataset,
            )
            assert b"top secret" not in body and b"members only" not in body


async def test_access_matrix_over_rpc(hypha_server, datasets, tokens):
    for who in ("alice", "bob"):
        client = await connect(
            hypha_server.url,
            workspace=hypha_server.workspace,
            token=hypha_server.mint(who, email=f"{who}@example.org"),
        )
        try:
            service = await client.get_service("datasets-http:bioengine-datasets")
            assert set(await service.list_datasets()) == EXPECTED_VISIBLE[who]
            if who == "alice":
                info = await service.get_dataset_info(dataset_id="private")
                assert info["http_url"].endswith("/data/private") and "sharded.zarr" in info["zarr_stores"]
                names = {e["name"] for e in await service.list_files(dataset_id="private")}
                assert {"sharded.zarr", "v2.zarr", "blob.bin"} <= names
                assert (await service.get_access_url(dataset_id="private", path="v2.zarr"))["url"].endswith(
                    "/data/private/v2.zarr"
                )
            else:
                for call in (
                    service.get_dataset_info(dataset_id="private"),
                    service.list_files(dataset_id="private"),
                ):
                    with pytest.raises(Exception, match=NOT_READABLE.format(id="private")):
                        await call
            with pytest.raises(Exception, match=NOT_READABLE.format(id="nope")):
                await service.get_dataset_info(dataset_id="nope")
        finally:
            await client.disconnect()
    # The admin sees everything, and the bad manifest is reported, not served.
    status = await datasets.get_status()
    assert "broken" in status["skipped"] and "authorized_users" in status["skipped"]["broken"]
    assert set(await datasets.list_datasets()) == EXPECTED_VISIBLE["admin"]


async def test_every_range_form(http_url, tokens, data_dir):
    url, token = f"{http_url}/data/private/blob.bin", tokens["alice"]
    whole = (data_dir / "private" / "blob.bin").read_bytes()
    cases = {
        "bytes=0-9": whole[0:10],
        "bytes=1000-": whole[1000:],
        "bytes=-24": whole[-24:],
        "bytes=1020-5000": whole[1020:],
    }
    for header, expected in cases.items():
        status, body, headers = await _get(url, token, {"Range": header})
        assert status == 206 and body == expected, header
        assert headers["Content-Range"].endswith(f"/{len(whole)}")
    status, body, headers = await _get(url, token, {"Range": "bytes=5000-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"
    status, body, headers = await _get(url, token)
    assert status == 200 and body == whole and headers["Accept-Ranges"] == "bytes"
    assert headers["Access-Control-Allow-Origin"] == "*" and "private" in headers["Cache-Control"]
    status, _, _ = await _get(url, token, {"If-None-Match": headers["ETag"]})
    assert status == 304


async def test_zarr_reads_equal_local_reads(http_url, tokens, data_dir):
    volume = np.load(data_dir / "private" / "volume.npy")
    token = tokens["alice"]
    store = HttpZarrStore(f"{http_url}/data/private/sharded.zarr", token=token)
    sharded = zarr.open_array(store, mode="r")
    assert sharded.shards == (1, 256, 256)
    np.testing.assert_array_equal(sharded[:], volume)
    np.testing.assert_array_equal(sharded[2, 10:70, 200:256], volume[2, 10:70, 200:256])
    v2 = open_dataset(http_url, "private", "v2.zarr", token=token)
    np.testing.assert_array_equal(v2[:], volume)
    group = open_dataset(http_url, "private", "group.zarr", token=token)
    np.testing.assert_array_equal(group["raw"][:], np.arange(64 * 64, dtype="float32").reshape(64, 64))
    for opened in (store, v2.store, group.store):
        opened.close()
    # A refused token is an error, never an array of fill values.
    with pytest.raises(DatasetAccessError) as info:
        zarr.open_array(HttpZarrStore(f"{http_url}/data/private/v2.zarr", token=tokens["bob"]), mode="r")
    assert info.value.status == 403


async def _batch(url, token, payload):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=payload, headers=headers) as response,
    ):
        return response.status, await response.read(), response.headers


def _unframe(body):
    """(status, bytes) per key, or (status, error message) for a key without bytes."""
    return [
        (entry["status"], entry["error"] if data is None else bytes(data))
        for entry, data in split_answer(body)
    ]


async def test_batch_reads_many_keys_in_one_request(http_url, tokens, data_dir):
    whole = (data_dir / "private" / "blob.bin").read_bytes()
    shard = (data_dir / "private" / "sharded.zarr" / "c" / "1" / "0" / "0").read_bytes()
    items = [
        {"key": "blob.bin"},
        {"key": "blob.bin", "range": "bytes=0-9"},
        {"key": "blob.bin", "range": "bytes=1000-"},
        {"key": "blob.bin", "range": "bytes=-24"},
        {"key": "sharded.zarr/c/1/0/0", "range": "bytes=-100"},
        {"key": "sharded.zarr/c/9/9/9"},
        {"key": "blob.bin", "range": "bytes=5000-"},
        {"key": "../../outside.txt"},
        {"key": "escape"},
        {"key": "sharded.zarr"},
    ]
    status, body, headers = await _batch(f"{http_url}/data/private", tokens["alice"], {"get": items})
    assert status == 200 and headers["Content-Type"] == "application/x-bioengine-batch"
    assert headers["Access-Control-Allow-Origin"] == "*"
    parts = _unframe(body)
    assert parts[:5] == [
        (200, whole),
        (206, whole[:10]),
        (206, whole[1000:]),
        (206, whole[-24:]),
        (206, shard[-100:]),
    ]
    assert [status for status, _ in parts[5:]] == [404, 416, 403, 403, 404]
    assert b"top secret" not in body and "leaves the dataset" in parts[7][1]
    # Keys are relative to the URL's path, as in a zarr store.
    status, body, _ = await _batch(
        f"{http_url}/data/private/sharded.zarr", tokens["alice"], {"get": [{"key": "c/1/0/0"}]}
    )
    assert status == 200 and _unframe(body) == [(200, shard)]


@pytest.mark.parametrize(
    ("who", "payload", "expected"),
    [
        ("bob", {"get": [{"key": "blob.bin"}]}, 403),
        ("anonymous", {"get": [{"key": "blob.bin"}]}, 401),
        ("alice", {"get": []}, 400),
        ("alice", {"keys": ["blob.bin"]}, 400),
        ("alice", {"get": [{"key": ""}]}, 400),
        ("alice", {"get": [{"key": "blob.bin", "range": 5}]}, 400),
        ("alice", {"get": [{"key": "blob.bin"}] * 257}, 400),
    ],
)
async def test_batch_refusals(http_url, tokens, who, payload, expected):
    status, body, _ = await _batch(f"{http_url}/data/private", tokens[who], payload)
    assert status == expected and b"error" in body and bytes(range(16)) not in body


async def test_batch_body_must_be_json(http_url, tokens):
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{http_url}/data/private", data=b"not json", headers=headers) as response:
            assert response.status == 400 and "not JSON" in (await response.json())["error"]
        async with session.options(
            f"{http_url}/data/private", headers={"Origin": "http://viewer"}
        ) as response:
            assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_the_store_batches_whole_reads(http_url, tokens, data_dir, datasets_process):
    def posts():
        logs = "".join(
            p.read_text(errors="replace") for p in (datasets_process.workspace_dir / "logs").glob("*")
        )
        return logs.count("POST /data/private/v2.zarr 200")

    before = posts()
    volume = np.load(data_dir / "private" / "volume.npy")
    store = HttpZarrStore(f"{http_url}/data/private/v2.zarr", token=tokens["alice"])
    sequential = HttpZarrStore(f"{http_url}/data/private/v2.zarr", token=tokens["alice"], batch=False)
    try:
        np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], volume)
        np.testing.assert_array_equal(zarr.open_array(sequential, mode="r")[:], volume)
    finally:
        store.close()
        sequential.close()
    deadline = time.monotonic() + 5  # the access log is written after the answer
    while posts() == before:
        assert time.monotonic() < deadline, "36 chunks read without a single batch request"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    "path",
    [
        "../../outside.txt",
        "%2e%2e/%2e%2e/outside.txt",
        "%252e%252e/%252e%252e/outside.txt",
        "escape",
        "..%2F..%2Foutside.txt",
        "//etc/passwd",
    ],
)
async def test_traversal_attempts_are_refused(http_url, tokens, path):
    # URLs are normalised before routing (RFC 3986 dot segments), and inside a dataset every
    # path is resolved and confined to its folder: nothing outside can be read.
    status, body, _ = await _get(f"{http_url}/data/private/{path}", tokens["alice"])
    assert 400 <= status < 500 and b"top secret" not in body, (path, status)


async def test_raw_traversal_is_refused(http_url, tokens):
    # Without the client normalising the URL.
    host = urllib.parse.urlsplit(http_url)
    reader, writer = await asyncio.open_connection(host.hostname, host.port)
    writer.write(
        f"GET /data/private/../../outside.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens['alice']}\r\nConnection: close\r\n\r\n".encode()
    )
    response = await reader.read()
    writer.close()
    assert b"top secret" not in response and response.split(b" ")[1].startswith(b"4")


async def test_bad_tokens_and_tokens_never_logged(http_url, tokens, datasets_process):
    status, _, _ = await _get(f"{http_url}/data/open/hello.txt", "not-a-token")
    assert status == 401
    status, body, _ = await _get(f"{http_url}/data/members/m.txt", params={"token": tokens["bob"]})
    assert status == 200 and body == b"members only"  # query token, for clients without headers
    logs = "".join(p.read_text(errors="replace") for p in (datasets_process.workspace_dir / "logs").glob("*"))
    assert "GET /data/members/m.txt 200" in logs
    for token in tokens.values():
        if token:
            assert token not in logs and token[-20:] not in logs


async def test_hot_reload(http_url, tokens, data_dir, datasets):
    async def visible():
        _, body, _ = await _get(f"{http_url}/datasets", tokens["bob"])
        return set(json.loads(body))

    async def until(predicate):
        deadline = time.monotonic() + 15
        while not predicate(await visible()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

    _write(data_dir / "fresh", "name: Fresh\nauthorized_users: [bob@example.org]\n")
    await until(lambda ids: "fresh" in ids)
    _write(data_dir / "fresh", "name: Fresh\nauthorized_users: [alice@example.org]\n")
    await until(lambda ids: "fresh" not in ids)
    assert "fresh" in await datasets.list_datasets()  # the admin still sees it
    (data_dir / "fresh" / "manifest.yaml").unlink()
    deadline = time.monotonic() + 15
    while "fresh" in await datasets.list_datasets():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


# ---- private answers like missing ------------------------------------------------------------------

# Same length as "private" and "members", so even Content-Length must match.
MISSING = "missing"


async def _answer(http_url, method, dataset, path, token=None, headers=None, body=None):
    """Status, the headers that can tell answers apart (all but Date) and the body, with the
    dataset id the caller gave replaced by <id>."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{http_url}/{path.format(id=dataset)}", headers=headers, data=body
        ) as response,
    ):
        raw = await response.read()
        kept = sorted((k, v) for k, v in response.headers.items() if k.lower() != "date")
        return response.status, kept, raw.replace(dataset.encode(), b"<id>")


REQUESTS = [
    ("GET", "data/{id}/blob.bin", None, None),
    ("GET", "data/{id}/no-such-file", None, None),
    ("GET", "data/{id}/blob.bin", {"Range": "bytes=0-9"}, None),
    ("GET", "data/{id}/../{id}/blob.bin", None, None),
    ("HEAD", "data/{id}/blob.bin", None, None),
    ("GET", "data/{id}?list=1", None, None),
    ("GET", "data/{id}/sharded.zarr?list=1", None, None),
    ("GET", "datasets/{id}", None, None),
    ("POST", "data/{id}", {"Content-Type": "application/json"}, b'{"get": [{"key": "blob.bin"}]}'),
    ("POST", "data/{id}/sharded.zarr", {"Content-Type": "application/json"}, b"not json"),
]


@pytest.mark.parametrize(
    ("who", "unreadable", "status"),
    [
        ("anonymous", ["private", "members", MISSING], 401),
        ("bob", ["private", MISSING], 403),
    ],
)
async def test_private_datasets_answer_like_missing_ones_over_http(http_url, tokens, who, unreadable, status):
    for method, path, headers, body in REQUESTS:
        answers = {
            dataset: await _answer(http_url, method, dataset, path, tokens[who], headers, body)
            for dataset in unreadable
        }
        first = answers[unreadable[0]]
        assert all(answer == first for answer in answers.values()), (method, path, answers)
        assert first[0] == status, (method, path, first)
        if method != "HEAD":
            expected = "without a token" if who == "anonymous" else "with this token"
            assert json.loads(first[2]) == {"error": f"dataset '<id>' not found or not readable {expected}"}
        assert b"bob" not in first[2] and b"example.org" not in first[2]
        assert ("WWW-Authenticate" in dict(first[1])) == (status == 401)


async def test_a_rejected_token_is_refused_before_any_dataset_is_looked_up(http_url):
    answers = [
        await _answer(http_url, "GET", dataset, "data/{id}/hello.txt", "not-a-token")
        for dataset in ("open", "private", MISSING)
    ]
    assert answers[0][0] == 401 and answers[0] == answers[1] == answers[2]
    assert b"rejected by the Hypha server" in answers[0][2]


def _anonymous_caller():
    return {"id": "anonymouz-visitor", "email": None, "is_anonymous": True}


async def test_private_datasets_answer_like_missing_ones_over_rpc(hypha_server, datasets):
    """A signed-in caller without access (bob, direct), and an anonymous one (forwarded by the
    services' own user, as the gateway does): the same exception for a private id and a
    missing one, apart from the id."""
    bob = await connect(
        hypha_server.url, workspace=hypha_server.workspace,
        token=hypha_server.mint("bob", email="bob@example.org"),
    )  # fmt: skip
    services = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint(SERVICES_USER)
    )
    try:
        as_bob = await bob.get_service("datasets-http:bioengine-datasets")
        as_services = await services.get_service("datasets-http:bioengine-datasets")
        anonymous = {"caller": _anonymous_caller()}
        callers = {
            "bob": (as_bob, {}, ["private", MISSING], "with this token"),
            "anonymous": (as_services, anonymous, ["private", "members", MISSING], "without a token"),
        }
        for who, (service, extra, unreadable, how) in callers.items():
            for method, kwargs in (
                ("get_dataset_info", {}),
                ("list_files", {"dir_path": "sharded.zarr"}),
                ("get_access_url", {"path": "v2.zarr"}),
            ):
                refusals = []
                for dataset in unreadable:
                    with pytest.raises(Exception) as info:
                        await getattr(service, method)(dataset_id=dataset, **kwargs, **extra)
                    refusals.append((type(info.value), str(info.value).replace(dataset, "<id>")))
                assert all(refusal == refusals[0] for refusal in refusals), (who, method, refusals)
                message = refusals[0][1]
                assert f"dataset '<id>' not found or not readable {how}" in message, (who, method, message)
                assert "bob" not in message and "example.org" not in message and "anonymouz" not in message
            # What they may read still works, and the listing shows only that.
            listed = await service.list_datasets(**extra)
            assert set(listed) == EXPECTED_VISIBLE[who]
    finally:
        await bob.disconnect()
        await services.disconnect()


# ---- logs cannot be forged -------------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00 INFO forged"
RECORD_START = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


async def _raw_get(http_url, target):
    """One request with the target exactly as given (no client normalising it), read to the
    end: the server writes its access line before it closes the connection."""
    host = urllib.parse.urlsplit(http_url)
    reader, writer = await asyncio.open_connection(host.hostname, host.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return response


async def test_request_paths_cannot_forge_log_lines(http_url, datasets_process):
    probes = {
        "probe-crlf": "/data/open/probe-crlf/a%0d%0a2026-01-01%2000:00:00%20INFO%20forged",
        "probe-lf": "/data/open/probe-lf%0a2026-01-01%2000:00:00%20INFO%20forged",
        "probe-nul": "/data/open/probe-nul%00.png",
        "probe-esc": "/data/open/probe-esc%1b[31mred%1b[0m",
        "probe-c1": "/data/open/probe-c1%c2%85%c2%9b31m",
        "probe-ls": "/data/open/probe-ls%e2%80%a82026-01-01%2000:00:00%20INFO%20forged",
        "probe-missing": "/data/probe-missing%0d%0a2026-01-01%2000:00:00%20INFO%20forged/x",
    }
    for target in probes.values():
        response = await _raw_get(http_url, target)
        assert response.split(b" ")[1][:1] == b"4", (target, response[:200])
    log = (datasets_process.workspace_dir / "logs" / "datasets.log").read_bytes()
    for forbidden in (b"\x00", b"\x1b", b"\r", "\u2028".encode(), "\x85".encode(), "\x9b".encode()):
        assert forbidden not in log, forbidden
    lines = log.split(b"\n")
    for name in probes:
        carrying = [line for line in lines if name.encode() in line]
        assert len(carrying) == 1 and RECORD_START.match(carrying[0]), (name, carrying)
        assert b"] GET /data/" in carrying[0]
    assert not any(line.startswith(FORGED.encode()) for line in lines)
    text = log.decode()
    assert f"probe-crlf/a\\r\\n{FORGED} 40" in text
    assert f"probe-ls\\u2028{FORGED} 40" in text
    assert "probe-nul\\x00.png 40" in text and "probe-esc\\x1b[31mred\\x1b[0m 40" in text
    assert "probe-c1\\x85\\x9b31m 40" in text
    # The console copy of the log (stderr) is escaped alike.
    console = (datasets_process.workspace_dir / "logs" / "datasets.console.log").read_bytes()
    assert b"\x00" not in console and b"\x1b" not in console and b"probe-nul\\x00.png" in console
