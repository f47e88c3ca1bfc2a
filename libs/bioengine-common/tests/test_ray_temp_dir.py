"""short_temp_dir: Ray's files stay in the preferred (workspace) directory and go with it; a
long path gets a short alias in /tmp that is a link, checked before it is used (its name can be
guessed by anyone on the machine)."""

import os
import shutil
from pathlib import Path

import pytest

from bioengine_common.errors import ConfigurationError
from bioengine_common.local_stack import _ray_head, short_temp_dir
from bioengine_common.local_stack._ray_head import MAX_TEMP_DIR_LENGTH


@pytest.fixture
def long_dir(tmp_path):
    """A Ray temp dir too long for Ray's socket paths; its alias is removed afterwards."""
    preferred = (tmp_path / ("workspace-" + "x" * 40) / "ray").resolve()
    assert len(str(preferred)) > MAX_TEMP_DIR_LENGTH
    aliases = []
    yield preferred, aliases
    for alias in aliases:
        if alias.is_symlink() or alias.is_file():
            alias.unlink()
        elif alias.is_dir():
            shutil.rmtree(alias)


def test_a_short_path_is_used_as_it_is():
    short = Path("/tmp") / "bioengine-t"
    assert short_temp_dir(short) == short
    assert not short.exists()  # nothing made for it


def test_a_long_path_gets_a_link_and_the_files_stay_in_it(long_dir):
    preferred, aliases = long_dir
    alias = short_temp_dir(preferred)
    aliases.append(alias)
    assert len(str(alias)) <= MAX_TEMP_DIR_LENGTH and alias.parent == Path("/tmp")
    assert alias.is_symlink() and Path(os.readlink(alias)) == preferred
    (alias / "session_1").mkdir()
    (alias / "session_1" / "log").write_text("ray wrote this")
    assert (preferred / "session_1" / "log").read_text() == "ray wrote this"
    assert short_temp_dir(preferred) == alias  # the same alias every time

    # Removing the workspace removes Ray's files; only the link is left, and it serves again.
    shutil.rmtree(preferred.parent)
    assert alias.is_symlink() and not alias.exists()
    assert short_temp_dir(preferred) == alias and alias.is_dir()


def test_a_directory_left_at_the_alias_by_an_earlier_release_is_used(long_dir):
    preferred, aliases = long_dir
    alias = short_temp_dir(preferred)
    aliases.append(alias)
    alias.unlink()
    alias.mkdir()
    (alias / "bioengine-head.json").write_text("{}")  # a running head's state, to adopt
    assert short_temp_dir(preferred) == alias
    assert (alias / "bioengine-head.json").exists() and not alias.is_symlink()


def test_an_alias_of_another_user_is_refused(long_dir, monkeypatch):
    preferred, aliases = long_dir
    alias = short_temp_dir(preferred)
    aliases.append(alias)
    # As seen by another user of the machine: the link exists and is not theirs.
    monkeypatch.setattr(_ray_head.os, "getuid", lambda: os.lstat(alias).st_uid + 1)
    with pytest.raises(ConfigurationError, match=r"belongs to another user .*remove it, or pass"):
        short_temp_dir(preferred)


def test_a_link_to_somewhere_else_or_a_file_is_refused(long_dir, tmp_path):
    preferred, aliases = long_dir
    alias = short_temp_dir(preferred)
    aliases.append(alias)
    alias.unlink()
    alias.symlink_to(tmp_path)
    with pytest.raises(ConfigurationError, match=rf"already links to {tmp_path}, not to {preferred}"):
        short_temp_dir(preferred)
    alias.unlink()
    alias.write_text("")
    with pytest.raises(ConfigurationError, match="neither a directory nor a link"):
        short_temp_dir(preferred)
