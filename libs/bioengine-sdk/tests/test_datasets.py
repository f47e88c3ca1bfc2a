"""bioengine.datasets without a server: what is refused, and how."""

import pytest

import bioengine
from bioengine.datasets import BioEngineDatasets


@pytest.fixture
def no_server(monkeypatch):
    monkeypatch.delenv("BIOENGINE_DATA_SERVER_URL", raising=False)


async def test_without_a_server_listing_is_empty_and_the_rest_is_refused(no_server):
    assert await bioengine.datasets.list_datasets() == {}
    with pytest.raises(bioengine.MissingDataServerError, match=r"BIOENGINE_DATA_SERVER_URL is not set"):
        await bioengine.datasets.list_files("cells")
    with pytest.raises(bioengine.MissingDataServerError):
        await bioengine.datasets.get_file("cells", "a.txt")
    with pytest.raises(bioengine.MissingDataServerError):
        await bioengine.datasets.ping_data_server()


@pytest.mark.parametrize(
    ("name", "args"),
    [("save_file", ("a.txt", b"x")), ("list_saved_files", ()), ("get_saved_file", ("a.txt",))],
)
async def test_what_our_server_cannot_do_says_so(name, args):
    with pytest.raises(
        NotImplementedError, match=rf"bioengine.datasets.{name}: this BioEngine's dataset server is read-only"
    ):
        await getattr(bioengine.datasets, name)(*args)


def test_chunk_cache_size_is_accepted():
    bioengine.datasets.set_chunk_cache_size_gb(2)
    with pytest.raises(ValueError, match=r"cannot be negative"):
        bioengine.datasets.set_chunk_cache_size_gb(-1)


async def test_an_unreachable_server_is_a_connection_error(unused_port):
    client = BioEngineDatasets(f"http://127.0.0.1:{unused_port}")
    with pytest.raises(ConnectionError, match=rf"http://127.0.0.1:{unused_port} is not reachable"):
        await client.list_datasets()
    assert await client.ping_data_server() is False


async def test_the_url_is_read_from_the_environment_when_used(monkeypatch):
    client = BioEngineDatasets()
    monkeypatch.setenv("BIOENGINE_DATA_SERVER_URL", "http://example.invalid:1/")
    assert client.url == "http://example.invalid:1"
    with pytest.raises(ValueError, match=r"is not a dataset id"):
        await client.list_files("a/b")


@pytest.fixture
def unused_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
