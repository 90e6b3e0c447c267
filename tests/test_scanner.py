from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from cachemgr import scanner
from tests.conftest import make_tree

# The scanner's inner loop comes in C (when the install built it) and in Python; every test
# below runs with each.
LOOPS = [pytest.param(scanner.scan_dir_py, id="python")]
try:
    from cachemgr._scandir import scan_dir as c_scan_dir

    LOOPS.append(pytest.param(c_scan_dir, id="c"))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True, params=LOOPS)
def loop(request, monkeypatch):
    monkeypatch.setattr(scanner, "scan_dir", request.param)
    return request.param


def test_the_c_loop_was_built():
    """The install builds it wherever there is a C compiler, as on every CI machine."""
    assert any(p.id == "c" for p in LOOPS)


def du_bytes(path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_size_matches_du_with_hard_links_counted_once(root):
    d = make_tree(root, "album", files=3, size=10000)
    os.link(d / "track00.mp3", d / "hardlink.mp3")
    (d / "sub").mkdir()
    (d / "sub" / "small").write_bytes(b"a")
    os.symlink("/etc/passwd", d / "link")  # never followed
    os.link(d / "sub" / "small", d / "small-again")  # linked across directories
    os.mkfifo(d / "fifo")  # counted in bytes (none), not as a file
    with open(d / "sparse", "wb") as f:
        f.truncate(10**7)  # ten MB long, nothing allocated
    result = scanner.scan(d, collect_subdirs=True)
    assert result.size_bytes == du_bytes(d)
    assert result.file_count == 5  # 3 tracks, small, sparse; a hard link is the same inode
    assert result.subdirs == ["sub"]


def test_one_directory_read_by_the_loop(root, loop):
    d = make_tree(root, "album", files=2, size=5000)
    (d / "cd1").mkdir()
    os.link(d / "track00.mp3", d / "again.mp3")
    os.symlink("track01.mp3", d / "alias")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        blocks, files, subs, linked, changed = loop(fd)
        assert loop(fd)[1] == files  # the caller's descriptor is neither moved nor closed
        assert scanner.scan_dir_py(fd)[1] == files  # nor by the C loop, for os.scandir's sake
    finally:
        os.close(fd)
    names = ("track01.mp3", "alias", "cd1", "track00.mp3", "again.mp3")
    st = {n: os.lstat(d / n) for n in names}
    assert changed == max(s.st_ctime for s in st.values())
    assert files == 1 and blocks == st["track01.mp3"].st_blocks + st["alias"].st_blocks
    assert subs == [("cd1", st["cd1"].st_blocks)]
    one = (st["track00.mp3"].st_dev, st["track00.mp3"].st_ino, st["track00.mp3"].st_blocks, 1)
    assert sorted(linked) == [one, one]
    with pytest.raises(OSError):
        loop(10**6)  # not a descriptor


def test_changed_is_the_newest_inode_change_in_the_tree(root):
    """When the tree was last written, which a downloader's preserved mtimes do not hide."""
    d = make_tree(root, "album/cd1", files=2)
    os.utime(d / "track00.mp3", (1, 1))  # curl -R: the file's own date; its ctime is now

    def newest() -> float:
        return max(os.lstat(p).st_ctime for p in [root / "album", *(root / "album").rglob("*")])

    first = scanner.scan(root / "album").changed
    assert first == newest()
    time.sleep(0.02)
    (d / "late.flac").write_bytes(b"x")  # the last file of a download, two levels down
    assert scanner.scan(root / "album").changed == newest() > first


def test_newest_directory_is_the_latest_download(root):
    make_tree(root, "old")
    make_tree(root, "new")
    os.utime(root / "old", (1, 1))
    assert scanner.newest_directory(root, key=lambda st: st.st_mtime) == "new"


def test_the_newest_directory_is_the_last_created_not_the_last_changed(root, monkeypatch):
    """A cover added to an older download made that one "the newest" (st_ctime), and
    register_completed_download booked it again instead of the download just finished."""
    (root / "older").mkdir()
    time.sleep(0.02)
    (root / "finished").mkdir()
    time.sleep(0.02)
    (root / "older" / "cover.jpg").write_bytes(b"x")
    if scanner.birth_time(root / "older") is None:
        pytest.skip("this filesystem keeps no birth times")
    assert scanner.newest_directory(root) == "finished"
    # Where a directory has no birth time, every one goes by st_ctime (never a mix).
    real = scanner.birth_time
    monkeypatch.setattr(
        scanner, "birth_time", lambda p: None if Path(p).name == "finished" else real(p)
    )
    assert scanner.newest_directory(root) == "older"


def test_downloads_born_in_one_tick_go_by_their_change_time_then_name(root, monkeypatch):
    """ext4 keeps birth times a jiffy apart: three albums begun together tied, and the first
    listed was taken for the newest whichever was made last."""
    for name in ("b", "c", "a"):  # `a` made last
        (root / name).mkdir()
        time.sleep(0.01)
    monkeypatch.setattr(scanner, "birth_time", lambda p: 1000.0)
    assert scanner.newest_directory(root) == "a"
    assert scanner.newest_directory(root, key=lambda st: 5.0) == "c"  # all tied: the last name


def test_directories_at_depth_skip_trash_and_files(root):
    make_tree(root, "a/x")
    make_tree(root, "b")
    (root / "file").write_text("no")
    (root / ".cachemgr-trash").mkdir()
    assert list(scanner.directories_at_depth(root, 1)) == ["a", "b"]
    assert list(scanner.directories_at_depth(root, 2)) == ["a/x"]


def test_directories_at_depth_skip_what_is_no_download(root):
    """An ext4 root's lost+found and a desktop's .Trash-1000 were booked by reconcile as
    downloads (and, oldest, evicted first). A dot starts album names too."""
    for name in ("lost+found", ".Trash-1000/files", ".cachemgr-trash/x", "...And Justice for All",
                 "album", "a/lost+found", "a/.hidden"):  # fmt: skip
        (root / name).mkdir(parents=True)
    (root / ".cachemgr-books").write_bytes(b"x")
    (root / ".DS_Store").write_bytes(b"x")
    others: list[str] = []
    found = list(scanner.directories_at_depth(root, 1, others=others))
    assert found == ["...And Justice for All", "a", "album"]
    assert others == [".DS_Store"]
    assert list(scanner.directories_at_depth(root, 2)) == ["a/.hidden", "a/lost+found"]
    assert scanner.newest_directory(root) in found


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


def test_a_tree_deeper_than_the_open_file_limit_is_refused_not_undercounted(root, cache):
    import resource

    from cachemgr import PathError

    path = root / "deep"
    for _ in range(40):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "f").write_bytes(b"x" * 8192)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 20, hard))  # room for 20 levels
    try:
        with pytest.raises(scanner.TooDeep, match="deeper"):
            scanner.scan(root / "deep")
        with pytest.raises(PathError, match="cannot be sized"):
            cache.register("deep")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert cache.store.tracked(["deep"]) == [False]
    assert scanner.scan(root / "deep").file_count == 1


def test_a_c_loop_built_from_an_older_source_is_not_used():
    """An install not rebuilt after an update kept the 4-value loop: every registration then
    failed with "not enough values to unpack". The Python loop takes over."""
    import sys

    code = (
        "import sys, types\n"
        "old = types.ModuleType('cachemgr._scandir')\n"
        "old.scan_dir = lambda fd: (0, 0, [], [])\n"
        "sys.modules['cachemgr._scandir'] = old\n"
        "from cachemgr import scanner\n"
        "print(scanner.scan_dir is scanner.scan_dir_py)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_newest_directory_is_never_one_that_cannot_be_booked(root):
    """A newest directory whose name is not UTF-8 failed register_completed_download, and
    every one after it, until something newer came."""
    (root / "album").mkdir()
    time.sleep(0.02)
    os.mkdir(os.path.join(os.fsencode(root), b"\xff-x"))
    passed: list[str] = []
    assert scanner.newest_directory(root, passed_over=passed) == "album"
    assert [os.fsencode(p) for p in passed] == [b"\xff-x"]  # said by register_latest


def test_a_filesystem_mounted_inside_a_download_is_not_counted(tmp_path):
    """A tmpfs (or another disk) mounted inside a download was counted into its size: bytes
    that are not on the cache's disk, and that no deletion frees."""
    d = tmp_path / "m3"
    (d / "inside").mkdir(parents=True)
    (d / "own.bin").write_bytes(b"\x01" * 8192)
    alone = scanner.scan(d)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "none", str(d / "inside")],
                          capture_output=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (d / "inside" / "big.bin").write_bytes(b"\x01" * 1_000_000)
        mounted = scanner.scan(d)
        du = subprocess.run(["du", "-s", "-x", "-B1", str(d)], capture_output=True, text=True)
    finally:
        subprocess.run(["umount", str(d / "inside")], check=True)
    assert mounted.file_count == alone.file_count == 1
    assert mounted.size_bytes == int(du.stdout.split()[0])  # nothing of the tmpfs, as du -x
    assert mounted.size_bytes < alone.size_bytes
