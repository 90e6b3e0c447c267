from __future__ import annotations

import os
import subprocess

from cachemgr import scanner
from tests.conftest import make_tree


def du_bytes(path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_size_matches_du_with_hard_links_counted_once(root):
    d = make_tree(root, "album", files=3, size=10000)
    os.link(d / "track00.mp3", d / "hardlink.mp3")
    (d / "sub").mkdir()
    (d / "sub" / "small").write_bytes(b"a")
    os.symlink("/etc/passwd", d / "link")  # never followed
    result = scanner.scan(d)
    assert result.size_bytes == du_bytes(d)
    assert result.file_count == 4  # 3 tracks + small; the hard link is the same inode


def test_newest_directory_is_the_latest_download(root):
    make_tree(root, "old")
    make_tree(root, "new")
    os.utime(root / "old", (1, 1))
    assert scanner.newest_directory(root, key=lambda st: st.st_mtime) == "new"


def test_directories_at_depth_skip_trash_and_files(root):
    make_tree(root, "a/x")
    make_tree(root, "b")
    (root / "file").write_text("no")
    (root / ".cachemgr-trash").mkdir()
    assert list(scanner.directories_at_depth(root, 1)) == ["a", "b"]
    assert list(scanner.directories_at_depth(root, 2)) == ["a/x"]


def test_a_symlinked_top_is_refused_and_nothing_outside_is_counted(root, canary):
    import pytest

    os.symlink(canary, root / "s")
    with pytest.raises(OSError):
        scanner.scan(root / "s")
    d = make_tree(root, "real", files=1)
    os.symlink(canary, d / "inner")  # a symlink inside is counted as itself, not followed
    assert scanner.scan(d).file_count == 1


def test_a_deep_tree_keeps_few_descriptors_open(root):
    deep = root / "deep"
    path = deep
    for i in range(60):
        path = path / f"level{i}"
    path.mkdir(parents=True)
    (path / "f").write_bytes(b"x")
    wide = root / "wide"
    for i in range(1500):  # more than the usual 1024 open files, were they all held at once
        (wide / f"d{i}").mkdir(parents=True)
    assert scanner.scan(deep).file_count == 1
    assert len(scanner.scan(wide, collect_subdirs=True).subdirs) == 1500
