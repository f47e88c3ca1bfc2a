"""zarr's own store test suite (``zarr.testing.store.StoreTests``) against ``HttpZarrStore`` and
a real dataset server.

The store is read-only, so the suite's ``set``/``get`` hooks (which bypass the store) write and
read the dataset directory that datasets-svc serves: every read the suite checks goes through
HTTP to the server and back. Each test gets an empty folder of its own inside one public
dataset and a store on it.

Read-only, as the suite itself provides for: writing tests skip themselves on
``supports_deletes``/``SupportsSetSync``; the read-only tests (``test_read_only_store_raises``,
``test_with_read_only_store``) run as they are. Where a test only *sets up* data through
``store.set``/``store._set_many``, that setup writes to the dataset directory and the test body
runs unchanged. Tests whose subject is writing through the store are skipped with the reason.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, launch_service, wait_for_service
from bioengine_datasets_client import HttpZarrStore

pytestmark = pytest.mark.integration

DATASET = "store-suite"
READ_ONLY = "HttpZarrStore is read-only: writing through it is not supported"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / DATASET).mkdir()
    (root / DATASET / "manifest.yaml").write_text("name: zarr store suite\npublic: true\n")
    return root


@pytest.fixture(scope="module")
def datasets_process(hypha_server: Any, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    service = launch_service(
        "datasets", hypha_server, tmp_path_factory.mktemp("datasets-svc"),
        "--data-dir", str(data_dir), "--client-id", "datasets-store-suite",
    )  # fmt: skip
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def http_url(datasets_process: Any, hypha_server: Any) -> str:
    """The server's URL, asked once (the suite has some 70 tests)."""
    admin = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint(ADMIN_USER, "admin")
    )
    try:
        info = await wait_for_service(admin, "datasets-store-suite:bioengine-datasets", timeout=60)
        return str((await (await admin.get_service(info["id"])).get_status())["http_url"])
    finally:
        await admin.disconnect()


class TestHttpZarrStore(StoreTests[HttpZarrStore, cpu.Buffer]):
    store_cls = HttpZarrStore
    buffer_cls = cpu.Buffer

    # ---- the suite's hooks: the dataset directory behind the server -----------------------------
    data_root: Path

    def _path(self, store: HttpZarrStore, key: str) -> Path:
        folder = store.base_url.rsplit("/", 1)[-1]
        return self.data_root / DATASET / folder / key

    async def set(self, store: HttpZarrStore, key: str, value: Buffer) -> None:
        path = self._path(store, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: HttpZarrStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(self._path(store, key).read_bytes())

    @pytest.fixture(autouse=True)
    def _data_root(self, data_dir: Path) -> None:
        self.data_root = data_dir

    @pytest.fixture
    def store_kwargs(self, http_url: str) -> dict[str, Any]:
        folder = uuid.uuid4().hex  # empty, and not there yet: a new store sees no keys
        return {"base_url": f"{http_url}/data/{DATASET}/{folder}", "retry_for": 0}

    @pytest.fixture
    async def store(self, open_kwargs: dict[str, Any]) -> AsyncIterator[HttpZarrStore]:
        async with await self.store_cls.open(**open_kwargs) as store:
            yield store

    @pytest.fixture
    async def store_not_open(self, store_kwargs: dict[str, Any]) -> AsyncIterator[HttpZarrStore]:
        async with self.store_cls(**store_kwargs) as store:
            yield store

    def _setup_writes_go_to_disk(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        """The suite puts a test's data in place with ``store.set``/``_set_many``; a read-only
        store cannot, so that setup writes the dataset directory (the reads stay the store's)."""

        async def set_value(key: str, value: Buffer) -> None:
            await self.set(store, key, value)

        async def set_many(values: Iterable[tuple[str, Buffer]]) -> None:
            for key, value in values:
                await self.set(store, key, value)

        monkeypatch.setattr(store, "set", set_value)
        monkeypatch.setattr(store, "_set_many", set_many)

    # ---- what the suite leaves to each store -----------------------------------------------------
    def test_store_repr(self, store: HttpZarrStore) -> None:
        assert repr(store) == f"HttpZarrStore({store.base_url!r})"

    def test_store_supports_writes(self, store: HttpZarrStore) -> None:
        assert not store.supports_writes and not store.supports_deletes

    def test_store_supports_listing(self, store: HttpZarrStore) -> None:
        assert store.supports_listing

    # ---- read-only instead of writable -----------------------------------------------------------
    def test_store_read_only(self, store: HttpZarrStore) -> None:
        assert store.read_only
        with pytest.raises(AttributeError):
            store.read_only = False  # type: ignore[misc]

    @pytest.mark.parametrize("read_only", [True, False])
    async def test_store_open_read_only(self, open_kwargs: dict[str, Any], read_only: bool) -> None:
        if not read_only:
            with pytest.raises(ValueError, match="HttpZarrStore is read-only"):
                await self.store_cls.open(**open_kwargs, read_only=False)
            return
        async with await self.store_cls.open(**open_kwargs, read_only=True) as store:
            assert store._is_open and store.read_only

    async def test_serializable_store(self, store: HttpZarrStore) -> None:
        await self.set(store, "foo", self.buffer_cls.from_bytes(b"\x01\x02\x03\x04"))
        copy = pickle.loads(pickle.dumps(store))
        assert copy == store and copy.read_only
        async with copy:
            value = await copy.get("foo", prototype=default_buffer_prototype())
        assert value is not None and value.to_bytes() == b"\x01\x02\x03\x04"

    # ---- setup through the store: written to the dataset directory instead ------------------------
    async def test_exists(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._setup_writes_go_to_disk(store, monkeypatch)
        await super().test_exists(store)

    async def test_getsize_prefix(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._setup_writes_go_to_disk(store, monkeypatch)
        await super().test_getsize_prefix(store)

    async def test_list(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._setup_writes_go_to_disk(store, monkeypatch)
        await super().test_list(store)

    async def test_list_prefix(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._setup_writes_go_to_disk(store, monkeypatch)
        await super().test_list_prefix(store)

    async def test_list_empty_path(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._setup_writes_go_to_disk(store, monkeypatch)
        await super().test_list_empty_path(store)

    async def test_list_dir(self, store: HttpZarrStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._setup_writes_go_to_disk(store, monkeypatch)
        await super().test_list_dir(store)

    # ---- writing through the store: not for a read-only store -------------------------------------
    async def test_set(self) -> None:
        pytest.skip(READ_ONLY)

    async def test_set_not_open(self) -> None:
        pytest.skip(READ_ONLY)

    async def test_set_many(self) -> None:
        pytest.skip(READ_ONLY)

    async def test_set_if_not_exists(self) -> None:
        pytest.skip(READ_ONLY)

    async def test_clear(self) -> None:
        pytest.skip(READ_ONLY + " (clear deletes every key)")
