"""Files written as one set: a report is replaced whole or not at all, stale files of the
same set go, nothing temporary stays, and bad folders are refused up front."""

from __future__ import annotations

import sys

import pytest

from stabcheck._files import atomic_write, output_directory, replace_files, writable_file
from stabcheck.errors import InvalidArgument

OWNED = ("summary.md", "run.json", "plots/*.png")


def text(value: str):
    return (lambda f: f.write(value), False)


def listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_new_set_replaces_the_old_one_and_its_stale_files(tmp_path):
    replace_files(tmp_path, {"summary.md": text("one"), "plots/a.png": text("a"),
                             "run.json": text("{}")}, OWNED)  # fmt: skip
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / ".summary.md.x1y2.tmp").write_text("left by a killed run")
    replace_files(tmp_path, {"summary.md": text("two"), "plots/b.png": text("b")}, OWNED)
    assert listing(tmp_path) == ["notes.txt", "plots/b.png", "summary.md"]
    assert (tmp_path / "summary.md").read_text() == "two"


def test_a_file_being_written_has_no_name_in_its_folder(tmp_path):
    """A process killed outright while writing (SIGKILL) must not leave a temporary file
    in a report folder: on Linux the file is unnamed until the instant before its rename."""
    seen = []

    def write(f):
        f.write("partial")
        f.flush()
        seen.append(listing(tmp_path))

    atomic_write(tmp_path / "measurements.partial.csv", write)
    if sys.platform.startswith("linux"):
        assert seen == [[]]
    assert listing(tmp_path) == ["measurements.partial.csv"]
    assert (tmp_path / "measurements.partial.csv").read_text() == "partial"
    assert (tmp_path / "measurements.partial.csv").stat().st_mode & 0o777 == 0o644

    def broken(f):
        f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "measurements.partial.csv", broken)
    assert listing(tmp_path) == ["measurements.partial.csv"]
    assert (tmp_path / "measurements.partial.csv").read_text() == "partial"


def test_a_set_that_fails_to_write_leaves_the_old_one_untouched(tmp_path):
    replace_files(tmp_path, {"summary.md": text("one"), "plots/a.png": text("a")}, OWNED)

    def broken(f):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_files(tmp_path, {"summary.md": text("two"), "run.json": (broken, False)}, OWNED)
    assert listing(tmp_path) == ["plots/a.png", "summary.md"]
    assert (tmp_path / "summary.md").read_text() == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_stop_signal_waits_until_the_set_is_in_place(tmp_path):
    import os
    import signal

    from stabcheck import _signals

    def signal_mid_move(f):
        f.write("two")
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the files are staged

    with _signals.stop_on_signals(), pytest.raises(_signals.Interrupted):
        replace_files(tmp_path, {"summary.md": (signal_mid_move, False)}, OWNED)
    assert listing(tmp_path) == []  # stopped before the move: nothing half-done

    with _signals.stop_on_signals(), pytest.raises(_signals.Interrupted):
        with _signals.held():
            replace_files(tmp_path, {"summary.md": text("three"), "run.json": text("{}")}, OWNED)
            os.kill(os.getpid(), signal.SIGTERM)
            replace_files(tmp_path, {"summary.md": text("four")}, OWNED)
    assert listing(tmp_path) == ["summary.md"]  # the held signal came after the second set
    assert (tmp_path / "summary.md").read_text() == "four"


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("", ["out=''", "is empty"]),
        ("a_file", ["is a file, not a directory"]),
        ("a_file/sub", ["cannot be used as a directory"]),
    ],
)
def test_an_output_folder_is_checked_up_front(tmp_path, monkeypatch, path, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InvalidArgument) as info:
        output_directory(path)
    for word in words:
        assert word in str(info.value)
    output_directory("new/deep")  # made when missing
    assert (tmp_path / "new" / "deep").is_dir()


def test_a_file_to_write_is_checked_up_front(tmp_path):
    with pytest.raises(InvalidArgument, match="is a directory"):
        writable_file(tmp_path, "--summary")
    assert writable_file(tmp_path / "sub" / "s.md", "--summary").parent.is_dir()
