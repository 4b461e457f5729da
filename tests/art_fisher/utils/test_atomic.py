"""Tests of :mod:`art_fisher`: the one atomic writer and the one output-folder check."""

from __future__ import annotations

import pytest

from art_fisher.utils import atomic_write, check_output_dir


def test_check_output_dir_accepts_creatable_and_existing_folders_and_leaves_nothing(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("x")
    assert check_output_dir(tmp_path / "kept") == tmp_path / "kept"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept", "old.txt"]  # no probe, nothing created


def test_check_output_dir_refuses_files_and_names_the_argument(tmp_path):
    (tmp_path / "file").write_text("a file")
    with pytest.raises(ValueError, match=r"^out .* exists and is not a folder \(it is a file\)"):
        check_output_dir(tmp_path / "file", name="out")
    with pytest.raises(ValueError, match="lies under the file"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="not writable"):
        check_output_dir("/proc/art_fisher_out")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def write_half_then_fail() -> None:
        with atomic_write(target, text=True) as fh:
            fh.write("half")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        write_half_then_fail()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with atomic_write(target, text=True) as fh:
        fh.write("new")
    assert target.read_text() == "new"
