"""write_json_atomic: whole files with the asked mode, and the old file kept when writing fails."""

import json
import stat

import pytest

from bioengine_common import write_json_atomic


def test_writes_the_value_with_the_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"port": 1234})
    write_json_atomic(target, {"port": 5678}, 0o640)
    assert json.loads(target.read_text()) == {"port": 5678}
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_value_that_cannot_be_written_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"port": 1234})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"port": object()})
    assert json.loads(target.read_text()) == {"port": 1234}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
