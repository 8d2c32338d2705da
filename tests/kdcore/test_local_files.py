"""kdcore.io.local_files: dataset files are read as themselves, never through a link, and the
refusal never depends on (so never reveals) what a link points at."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.errors import DataError
from kdcore.io.local_files import open_regular, regular_file, regular_files
from kdcore.text.data import iter_records


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "real.tar").write_bytes(b"real")
    (tmp_path / "to_host.tar").symlink_to("/etc/passwd")
    (tmp_path / "to_nothing.tar").symlink_to("/nonexistent-kd-test/x.tar")
    (tmp_path / "sub.tar").mkdir()
    return tmp_path


def test_listing_skips_links_and_folders(folder: Path):
    assert regular_files(folder, ".tar") == [folder / "real.tar"]


@pytest.mark.parametrize("call", [regular_file, open_regular])
def test_a_link_is_refused_in_the_same_words_whatever_its_target(folder: Path, call):
    words = []
    for name in ("to_host.tar", "to_nothing.tar"):
        with pytest.raises(DataError) as caught:
            call(folder / name)
        words.append(str(caught.value).replace(name, "X"))
        assert "passwd" not in str(caught.value) and "nonexistent" not in str(caught.value)
    assert words[0] == words[1] and "symbolic link" in words[0]


def test_a_regular_file_opens_and_a_folder_does_not(folder: Path):
    with open_regular(folder / "real.tar") as fh:
        assert fh.read() == b"real"
    with pytest.raises(DataError, match="not a regular file"):
        open_regular(folder / "sub.tar")


def test_a_text_set_that_is_a_link_is_not_read(tmp_path: Path):
    (tmp_path / "corpus.txt").symlink_to("/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        next(iter_records(tmp_path / "corpus.txt"))
