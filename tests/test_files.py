"""files.atomic_path: a write that fails is one line naming the file, and the old file is kept whole."""

import errno
import os

import pytest

from ambiguous_digits import files


def test_a_folder_that_does_not_exist_is_a_write_error_naming_the_file(tmp_path):
    target = tmp_path / "missing" / "out.json"
    with pytest.raises(files.WriteError) as e:
        files.write_json(target, {"a": 1})
    assert str(e.value) == f"{target}: cannot write it (No such file or directory)"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(files.WriteError, match=r"out.txt: cannot write it \(No space left on device\)"):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_folder_in_the_way_is_a_write_error_and_is_left_alone(tmp_path):
    target = tmp_path / "report.html"
    target.mkdir()
    (target / "keep").write_text("mine")
    with pytest.raises(files.WriteError, match="report.html: cannot write it"):
        files.write_text(target, "<html>")
    assert (target / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def _pair(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    return a, b


def test_atomic_paths_replaces_a_set_of_files_together(tmp_path):
    a, b = _pair(tmp_path)
    with files.atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]  # no temporary, no old copy left


@pytest.mark.parametrize("refused", ["keeping a copy of the old b", "moving the new b in", "an interrupt"])
def test_atomic_paths_puts_the_old_set_back_when_a_step_fails(tmp_path, monkeypatch, refused):
    a, b = _pair(tmp_path)
    real_replace, real_link = os.replace, os.link

    def link(src, dst):  # an undeletable (immutable) b cannot be linked to, nor replaced
        if refused == "keeping a copy of the old b" and str(src) == str(b):
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_link(src, dst)

    def replace(src, dst):  # the second rename, once a's is done
        if str(dst) == str(b) and str(src).endswith(".tmp"):
            if refused == "an interrupt":
                raise KeyboardInterrupt
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "link", link)
    monkeypatch.setattr(files.os, "replace", replace)
    expected = (KeyboardInterrupt if refused == "an interrupt" else files.WriteError)
    with pytest.raises(expected, match=None if refused == "an interrupt" else
                       r"b.json: cannot write it \(Operation not permitted\)"):
        with files.atomic_paths(a, b) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]


def test_atomic_paths_without_hard_links_keeps_copies(tmp_path, monkeypatch):
    a, b = _pair(tmp_path)

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "link", no_links)
    with files.atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]


def test_atomic_paths_names_the_set_when_a_temporary_cannot_be_written(tmp_path):
    a, b = _pair(tmp_path)
    with pytest.raises(files.WriteError, match=r": cannot write a.npz, b.json \(No space left on device\)"):
        with files.atomic_paths(a, b) as (ta, tb):
            ta.write_text("new a")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]


def test_atomic_paths_refuses_a_folder_in_the_way_before_moving_anything(tmp_path):
    a, b = _pair(tmp_path)
    b.unlink()
    b.mkdir()
    with pytest.raises(files.WriteError, match="b.json: cannot write it \\(a folder is in the way\\)"):
        with files.atomic_paths(a, b) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    assert a.read_text() == "old a" and b.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]


def test_other_errors_pass_through_unchanged(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(KeyError):
        with files.atomic_path(target):
            raise KeyError("not a write error")
    assert list(tmp_path.iterdir()) == []


def test_write_new_takes_the_first_free_name_and_never_overwrites(tmp_path):
    (tmp_path / "d.png").write_bytes(b"first")
    (tmp_path / "d-2.png").mkdir()  # a folder in the way counts as taken too
    assert files.write_new(tmp_path, "d", ".png", b"third") == tmp_path / "d-3.png"
    assert files.write_new(tmp_path, "e", ".png", b"new") == tmp_path / "e.png"
    assert (tmp_path / "d.png").read_bytes() == b"first" and (tmp_path / "d-3.png").read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-2.png", "d-3.png", "d.png", "e.png"]  # no temp left


def test_write_error_survives_pickling(tmp_path):
    """It may cross a process boundary (a Ray task, a multiprocessing worker) and must arrive whole."""
    import pickle
    error = files.WriteError.of(tmp_path / "x", OSError(errno.EROFS, "Read-only file system"))
    assert str(pickle.loads(pickle.dumps(error))) == f"{tmp_path / 'x'}: cannot write it (Read-only file system)"


def test_write_new_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    (tmp_path / "d.png").write_bytes(b"first")
    assert files.write_new(tmp_path, "d", ".png", b"second") == tmp_path / "d-2.png"
    assert (tmp_path / "d.png").read_bytes() == b"first" and (tmp_path / "d-2.png").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-2.png", "d.png"]


def test_commands_writing_one_run_directory_at_once_keep_every_manifest_entry(tmp_path):
    """Two writers (say `predict --run R` during `audit --out R`) each list their own files."""
    import threading

    from ambiguous_digits import manifest

    def writer(tag):
        for i in range(40):
            path = tmp_path / f"{tag}-{i}.txt"
            path.write_text(tag)
            manifest.record(tmp_path, path)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(manifest.load(tmp_path)) == sorted(f"{t}-{i}.txt" for t in "ab" for i in range(40))


def test_an_unreadable_manifest_is_one_config_error(tmp_path, monkeypatch):
    from pathlib import Path

    from ambiguous_digits import manifest
    from ambiguous_digits.config import ConfigError

    manifest.record(tmp_path)

    def denied(self, *a, **k):  # what another user's 0600 manifest gives (the tests run as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError, match=r"manifest.json: unreadable manifest \(Permission denied\)"):
        manifest.load(tmp_path)
