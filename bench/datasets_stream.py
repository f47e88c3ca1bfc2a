"""Streaming a Zarr dataset over HTTP versus reading it locally. Prints; asserts nothing.

    uv run python bench/datasets_stream.py [--planes 64] [--rounds 3] [--tiles 300] [--concurrency 10,32]

Writes a uint16 (planes, 2048, 2048) array with (1, 512, 512) chunks (512 MiB raw for 64
planes), and the same planes as a sharded array (one (1, 2048, 2048) shard per plane, the same
chunks inside), serves both with bioengine-datasets (real Hypha token check), then in the same
run, interleaved round by round: whole-array reads through HttpZarrStore as a user gets it
(batches, read-ahead), HttpZarrStore with one plain GET per key (no batches; the same read-ahead),
zarr's stock fsspec HTTP store against our server, both fsspec and HttpZarrStore's plain GETs
against a bare file server (``bench/_bare_http.py``: the floor of a read over HTTP), and
locally, each at every zarr ``async.concurrency`` given (the same setting for every reader; 10
is zarr's default); the sharded array the same ways but fsspec; then p50/p95 latency of random
aligned 512x512 tiles, each reader in turn reading a new tile first, every other pass in the
opposite order (so that of two readers, each reads a tile after the other equally often).
Last lines: what the ratios are, then `ratio: <MB/s at best concurrency> <tile p50> <MB/s at
concurrency 10> <tile p95> <sharded MB/s at best concurrency>`, each HttpZarrStore/local (the
throughput ratios compare each reader at its own best concurrency, medians)."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import zarr
from _stats import cpu_seconds, percentile  # bench/_stats.py

from bioengine_common import connect, free_port, spawn, stop_process, wait_for_port
from bioengine_common.local_stack import EmbeddedHypha
from bioengine_datasets_client import HttpZarrStore


def write_dataset(root: Path, planes: int) -> float:
    folder = root / "bench"
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text("name: Benchmark volume\nauthorized_users: [bench-user]\n")
    array = zarr.create_array(
        store=folder / "volume.zarr", shape=(planes, 2048, 2048), chunks=(1, 512, 512), dtype="uint16"
    )
    sharded = zarr.create_array(  # the same planes, one shard per plane of (1, 512, 512) chunks
        store=folder / "sharded.zarr",
        shape=(planes, 2048, 2048),
        chunks=(1, 512, 512),
        shards=(1, 2048, 2048),
        dtype="uint16",
    )
    rng = np.random.default_rng(0)
    offsets = np.arange(-60, 61)
    blob = 2000 * np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 15.0**2))
    for z in range(planes):  # microscopy-like: background, blobs (sigma 15 px), Poisson noise
        plane = np.full((2048 + 120, 2048 + 120), 100.0)
        for cy, cx in rng.integers(0, 2048, size=(60, 2)):
            plane[cy : cy + 121, cx : cx + 121] += blob
        array[z] = sharded[z] = rng.poisson(plane[60:-60, 60:-60]).astype("uint16")
    return planes * 2048 * 2048 * 2 / 1e6


def start_bare_server(data_dir: Path, work: Path) -> tuple[object, str]:
    """bench/_bare_http.py serving ``data_dir``: the floor of a read over HTTP."""
    port = free_port()
    process = spawn(
        [sys.executable, str(Path(__file__).with_name("_bare_http.py")), str(data_dir), str(port)],
        log_path=work / "bare-http.console.log",
    )
    try:
        wait_for_port("127.0.0.1", port, 30, process)
    except BaseException:
        stop_process(process)
        raise
    return process, f"http://127.0.0.1:{port}"


def start_server(hypha: EmbeddedHypha, data_dir: Path, work: Path) -> tuple[object, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")}
    env["BIOENGINE_TOKEN"] = hypha.mint("bioengine-datasets")
    process = spawn(
        [sys.executable, "-m", "bioengine_datasets", "--server-url", hypha.url, "--workspace", hypha.workspace,
         "--workspace-dir", str(work), "--data-dir", str(data_dir), "--client-id", "datasets-bench"],
        env=env, log_path=work / "datasets.console.log",
    )  # fmt: skip

    async def url() -> str:
        server = await connect(hypha.url, workspace=hypha.workspace, token=hypha.mint("bench-admin", "admin"))
        try:
            for _ in range(600):
                try:
                    service = await server.get_service("datasets-bench:bioengine-datasets")
                    return str((await service.get_status())["http_url"])
                except Exception:
                    await asyncio.sleep(0.1)
            raise SystemExit("bioengine-datasets did not start")
        finally:
            await server.disconnect()

    return process, asyncio.run(url())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=64, help="planes of 2048x2048 uint16 (64 = 512 MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved whole-array rounds (median)")
    parser.add_argument("--tiles", type=int, default=300, help="random tiles per reader (default 300)")
    parser.add_argument(
        "--concurrency",
        default="10,32",
        help="zarr async.concurrency values, comma-separated (10 is zarr's default)",
    )
    args = parser.parse_args()
    try:
        levels = [int(level) for level in args.concurrency.split(",")]
        assert levels and min(levels) >= 1
    except (ValueError, AssertionError):
        parser.error(f"--concurrency takes positive integers separated by commas, not {args.concurrency!r}")

    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        raw_mb = write_dataset(root / "data", args.planes)
        disk = {
            name: sum(f.stat().st_size for f in (root / "data" / "bench" / name).rglob("*") if f.is_file())
            / 1e6
            for name in ("volume.zarr", "sharded.zarr")
        }
        print(
            f"dataset: {raw_mb:.0f} MB raw, {disk['volume.zarr']:.0f} MB on disk "
            f"({disk['sharded.zarr']:.0f} MB sharded), written in {time.monotonic() - started:.0f} s"
        )
        hypha = EmbeddedHypha(root / "hypha", "bench", s3=False, log=lambda m: None)
        hypha.start()
        process, http_url = start_server(hypha, root / "data", root / "work")
        bare_process = None
        try:
            bare_process, bare_url = start_bare_server(root / "data", root / "work")
            token = hypha.mint("bench-user", "read")
            url = f"{http_url}/data/bench/volume.zarr"
            stores = [HttpZarrStore(url, token=token), HttpZarrStore(url, token=token, batch=False)]
            stores += [
                HttpZarrStore(f"{http_url}/data/bench/sharded.zarr", token=token, batch=b)
                for b in (True, False)
            ]
            # Our client's plain GETs against the bare server: the floor with the client we ship.
            stores.append(HttpZarrStore(f"{bare_url}/bench/volume.zarr", batch=False))
            http_store, per_key_store, sharded_store, sharded_per_key, bare_store = stores
            readers = {
                "HttpZarrStore": zarr.open_array(http_store, mode="r"),
                "  one GET/key": zarr.open_array(per_key_store, mode="r"),
                "fsspec HTTP": zarr.open_array(
                    url,
                    mode="r",
                    storage_options={"client_kwargs": {"headers": {"Authorization": f"Bearer {token}"}}},
                ),
                "fsspec, bare server": zarr.open_array(f"{bare_url}/bench/volume.zarr", mode="r"),
                "one GET/key, bare": zarr.open_array(bare_store, mode="r"),
                "local": zarr.open_array(root / "data" / "bench" / "volume.zarr", mode="r"),
                "sharded HttpZarrStore": zarr.open_array(sharded_store, mode="r"),
                "sharded one GET/key": zarr.open_array(sharded_per_key, mode="r"),
                "sharded local": zarr.open_array(root / "data" / "bench" / "sharded.zarr", mode="r"),
            }
            reference = readers["local"][0, :512, :512]
            for name, array in readers.items():  # warm-up and a correctness check
                assert np.array_equal(array[0, :512, :512], reference), name
            seconds: dict[tuple[str, int], list[float]] = {(n, c): [] for n in readers for c in levels}
            cpu: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in seconds}
            me, ours, bare = psutil.Process(), psutil.Process(process.pid), psutil.Process(bare_process.pid)
            server_of = {name: bare if "bare" in name else ours for name in readers}  # local: ours, idle

            for _ in range(args.rounds):
                for level in levels:
                    with zarr.config.set({"async.concurrency": level}):
                        for name, array in readers.items():
                            server = server_of[name]
                            c0, s0, t0 = cpu_seconds(me), cpu_seconds(server), time.perf_counter()
                            array[:]
                            seconds[name, level].append(time.perf_counter() - t0)
                            cpu[name, level].append((cpu_seconds(me) - c0, cpu_seconds(server) - s0))
            tiles: dict[str, list[float]] = {name: [] for name in readers}
            rng = random.Random(1)
            names = list(readers)
            for index in range(args.tiles):
                z, y, x = rng.randrange(args.planes), rng.randrange(4) * 512, rng.randrange(4) * 512
                # Each reader in turn reads a new tile first (from a cold chunk file), so that
                # no reader pays that more often than another. Every other pass over the readers
                # goes in the opposite order: a reader that reads a chunk just after another
                # got it from the same server is about 0.05 ms faster (measured here; the
                # server's file and socket work is warm), so without it a reader listed just
                # before another would pay that in 8 turns of 9.
                turn = index % len(names)
                order = names[turn:] + names[:turn]
                for name in order[::-1] if (index // len(names)) % 2 else order:
                    array = readers[name]
                    t0 = time.perf_counter()
                    array[z, y : y + 512, x : x + 512]
                    tiles[name].append((time.perf_counter() - t0) * 1000)
            for store in stores:
                store.close()
        finally:
            stop_process(process)
            stop_process(bare_process)
            hypha.stop()

    print(
        f"\nwhole-array read, MB/s (median of {args.rounds}; best round in brackets), by zarr async.concurrency"
    )
    print(f"{'reader':<22}" + "".join(f"{level:>16}" for level in levels))
    for name in readers:
        cells = []
        for level in levels:
            rates = [raw_mb / s for s in seconds[name, level]]
            cells.append(f"{statistics.median(rates):>9.0f} [{max(rates):>4.0f}]")
        print(f"{name:<22}" + "".join(cells))
    print("CPU seconds per read, reader process + the server it reads from (medians)")
    for name in readers:
        cells = [
            f"{statistics.median(c for c, _ in cpu[name, level]):>8.2f} +{statistics.median(s for _, s in cpu[name, level]):>5.2f}"
            for level in levels
        ]
        print(f"{name:<22}" + "".join(f"{cell:>16}" for cell in cells))
    for level in levels:
        ratio = statistics.median(seconds["local", level]) / statistics.median(
            seconds["HttpZarrStore", level]
        )
        # Where every core is busy, a read over HTTP is slower than local by the CPU the
        # server and the client's HTTP work add: local CPU / (reader + server CPU) is its floor.
        local_cpu = statistics.median(c for c, _ in cpu["local", level])
        http_cpu = statistics.median(c + s for c, s in cpu["HttpZarrStore", level])
        print(
            f"HttpZarrStore/local at concurrency {level}: {ratio:.2f} (CPU-bound floor, local CPU / "
            f"(reader + server CPU): {local_cpu / http_cpu:.2f})"
        )
    print(f"\n{'reader':<22}{'tile p50 ms':>13}{'tile p95 ms':>13}")
    for name in readers:
        print(f"{name:<22}{statistics.median(tiles[name]):>13.2f}{percentile(tiles[name], 95):>13.2f}")

    def best(name: str) -> float:
        return min(statistics.median(seconds[name, level]) for level in levels)

    default = 10 if 10 in levels else levels[0]  # zarr's default async.concurrency
    throughput = best("local") / best("HttpZarrStore")
    at_default = statistics.median(seconds["local", default]) / statistics.median(
        seconds["HttpZarrStore", default]
    )
    sharded = best("sharded local") / best("sharded HttpZarrStore")
    tile = statistics.median(tiles["HttpZarrStore"]) / statistics.median(tiles["local"])
    tile95 = percentile(tiles["HttpZarrStore"], 95) / percentile(tiles["local"], 95)
    local_tile = statistics.median(tiles["local"])
    print(
        "tile p50 floor, a bare file server / local: "
        f"{statistics.median(tiles['one GET/key, bare']) / local_tile:.2f} with HttpZarrStore's GETs, "
        f"{statistics.median(tiles['fsspec, bare server']) / local_tile:.2f} with zarr's fsspec store; "
        "bioengine-datasets / the bare server with the same client: "
        f"{statistics.median(tiles['  one GET/key']) / statistics.median(tiles['one GET/key, bare']):.2f} "
        f"(HttpZarrStore's GETs), "
        f"{statistics.median(tiles['fsspec HTTP']) / statistics.median(tiles['fsspec, bare server']):.2f} (fsspec)"
    )
    batch, per_key = tiles["HttpZarrStore"], tiles["  one GET/key"]
    print(
        f"one tile, batch path / one GET per key: p50 {statistics.median(batch) / statistics.median(per_key):.3f}, "
        f"p95 {percentile(batch, 95) / percentile(per_key, 95):.3f}, median of the tile by tile ratio "
        f"{statistics.median(b / g for b, g in zip(batch, per_key, strict=True)):.3f}"
    )
    print(
        "ratio: <MB/s at best concurrency> <tile p50> <MB/s at concurrency "
        f"{default}> <tile p95> <sharded MB/s at best concurrency>, HttpZarrStore/local"
    )
    print(f"ratio: {throughput:.2f} {tile:.2f} {at_default:.2f} {tile95:.2f} {sharded:.2f}")


if __name__ == "__main__":
    main()
