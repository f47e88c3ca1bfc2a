"""Pure parts of bioengine-datasets: Range parsing, path confinement, manifest scanning."""

import os
import time

import pytest

from bioengine_common import NotFound, PermissionDenied
from bioengine_datasets._paths import resolve_inside
from bioengine_datasets._ranges import RangeNotSatisfiable, parse_range
from bioengine_datasets._registry import DatasetRegistry, scan_data_dir


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),  # suffix longer than the file: the whole file
        ("bytes=90-1000", 100, (90, 99)),  # end past the file is clipped
        ("bytes=99-99", 100, (99, 99)),
        (" bytes = 5-6 ", 100, (5, 6)),
        ("items=0-5", 100, None),  # other units are ignored
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file, as the RFC allows
        ("BYTES=0-9", 100, (0, 9)),  # the unit is case-insensitive
        ("bytes=\t0\t-\t9\t", 100, (0, 9)),  # optional whitespace is SP or HTAB
        ("bytes=0000000000000000000000000000000000000007-0009", 100, (7, 9)),
        ("bytes=0-" + "9" * 5000, 100, (0, 99)),  # past int()'s digit limit: just past the end
        ("bytes=-" + "9" * 5000, 100, (0, 99)),
        ("b\u0443tes=0-5", 100, None),  # a unit that only looks like bytes: not ours, ignored
        ("garbage", 100, None),
    ],
)
def test_range_forms(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=\u0661-\u0665",  # Arabic-Indic digits
        "bytes=\u0661\u0660-",
        "bytes=-\u0665",
        "bytes=\uff10-\uff15",  # fullwidth digits
        "bytes=\u00b9-\u00b2",  # superscripts (str.isdigit() says True)
        "bytes=\u09e6-\u09eb",  # Bengali digits
        "bytes=1_0-20",  # int() accepts underscores
        "bytes=+1-20",
        "bytes=0x10-20",
        "bytes=\u00a00-5",  # no-break space is not optional whitespace
        "bytes=0-5\u3000",
        "bytes=0-5\x1c",  # str.strip() would drop it
        "bytes=1-2-3",
        "bytes=" + "9" * 5000 + "-",  # starts past any file
    ],
)
def test_only_ascii_digits_make_a_range(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=200-300", 100), ("bytes=-0", 100), ("bytes=5-2", 100), ("bytes=-", 100),
     ("bytes=a-b", 100), ("bytes=1", 100), ("bytes=-5", 0), ("bytes=0-0", 0)],
)  # fmt: skip
def test_unsatisfiable_or_malformed_ranges(header, size):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "ds"
    (root / "a.zarr" / "c").mkdir(parents=True)
    (root / "a.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link-out")
    os.symlink(root / "a.zarr" / "zarr.json", root / "link-in")
    return root


def test_paths_inside_resolve(dataset_root):
    assert resolve_inside(dataset_root, "a.zarr/zarr.json").read_text() == "{}"
    assert resolve_inside(dataset_root, "link-in").name == "zarr.json"  # a link that stays inside
    with pytest.raises(NotFound):
        resolve_inside(dataset_root, "a.zarr/missing")


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "a.zarr/../../secret.txt",
        "/etc/passwd",
        "link-out",
        "a.zarr/..\\..\\secret.txt",
        "x\x00y",
    ],
)
def test_traversal_is_refused(dataset_root, path):
    with pytest.raises(PermissionDenied):
        resolve_inside(dataset_root, path)


def test_encoded_dots_are_literal_names(dataset_root):
    with pytest.raises(NotFound):  # "%2e%2e" is a (missing) file name here, not a parent
        resolve_inside(dataset_root, "%2e%2e/secret.txt")


def _dataset(data_dir, folder, manifest, name="manifest.yaml"):
    (data_dir / folder).mkdir(parents=True, exist_ok=True)
    (data_dir / folder / name).write_text(manifest)


def test_scan_finds_datasets_and_reports_bad_manifests(tmp_path):
    _dataset(tmp_path, "good", "name: Good\nauthorized_users: alice@example.org\n")
    (tmp_path / "good" / "img.zarr").mkdir()
    (tmp_path / "good" / "sub" / "more.zarr").mkdir(parents=True)
    _dataset(tmp_path, "yml", "id: renamed\npublic: true\n", name="manifest.yml")
    _dataset(tmp_path, "broken-yaml", "name: [unclosed\n")
    _dataset(tmp_path, "not-a-mapping", "- a\n- b\n")
    _dataset(tmp_path, "bad-field", "authorized_users: 5\n")
    _dataset(tmp_path, "bad-id", "id: ../escape\n")
    _dataset(tmp_path, "zz-dup", "id: renamed\n")  # folders are read in name order
    (tmp_path / "no-manifest").mkdir()
    datasets, problems = scan_data_dir(tmp_path)
    assert set(datasets) == {"good", "renamed"}
    assert datasets["good"].manifest.authorized_users == ["alice@example.org"]
    assert datasets["good"].zarr_stores == ["img.zarr", "sub/more.zarr"]
    assert datasets["renamed"].manifest.public is True
    assert set(problems) == {"broken-yaml", "not-a-mapping", "bad-field", "bad-id", "zz-dup"}
    assert (
        "authorized_users" in problems["bad-field"] and "duplicate dataset id 'renamed'" in problems["zz-dup"]
    )
    assert "no-manifest" not in problems


def test_refresh_sees_added_changed_and_removed(tmp_path):
    registry = DatasetRegistry(tmp_path)
    _dataset(tmp_path, "one", "name: One\n")
    assert registry.refresh() == ({"one"}, set())
    assert registry.refresh() == (set(), set())
    time.sleep(0.01)
    _dataset(tmp_path, "one", "name: One again\n")
    _dataset(tmp_path, "two", "name: Two\n")
    assert registry.refresh() == ({"one", "two"}, set())
    assert registry.datasets["one"].manifest.name == "One again"
    (tmp_path / "one" / "manifest.yaml").unlink()
    assert registry.refresh() == (set(), {"one"})


def test_sizes_are_measured_once_then_again_when_due_or_changed(tmp_path):
    folder = tmp_path / "cells"
    (folder / "img.zarr" / "c" / "0").mkdir(parents=True)
    (folder / "manifest.yaml").write_text("name: Cells\n")
    (folder / "img.zarr" / "zarr.json").write_bytes(b"x" * 100)
    (folder / "img.zarr" / "c" / "0" / "0").write_bytes(b"y" * 1000)
    (folder / "link").symlink_to(tmp_path)  # not followed: no loop, not counted twice
    registry = DatasetRegistry(tmp_path)
    registry.refresh()
    assert registry.size_of("cells") is None and "size_bytes" not in registry.datasets["cells"].info()
    manifest_bytes = (folder / "manifest.yaml").stat().st_size
    assert registry.measure_sizes(max_age=300, now=1000.0) == ["cells"]
    assert registry.size_of("cells") == 1100 + manifest_bytes
    assert registry.datasets["cells"].info(registry.size_of("cells"))["size_bytes"] == 1100 + manifest_bytes
    (folder / "img.zarr" / "c" / "0" / "1").write_bytes(b"z" * 50)
    assert registry.measure_sizes(max_age=300, now=1100.0) == []  # not due yet: the old figure
    assert registry.size_of("cells") == 1100 + manifest_bytes
    assert registry.measure_sizes(max_age=300, now=1300.0) == ["cells"]
    assert registry.size_of("cells") == 1150 + manifest_bytes
    (folder / "manifest.yaml").write_text("name: Cells, renamed\n")
    os.utime(folder / "manifest.yaml", (2000.0, 2000.0))
    registry.refresh()  # a changed dataset is measured afresh
    assert registry.size_of("cells") is None
