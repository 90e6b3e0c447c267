from __future__ import annotations

import os
import unicodedata

import pytest

from cachemgr import NotOnDisk, NotTracked, PathError
from cachemgr.paths import normalize, resolve
from tests.conftest import make_tree

BAD = [
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    "%2e%2e/x",
    "a/%252e%252e/b",
    "",
    ".",
    "/",
    "a\x00b",
    "x" * 300,
    ".cachemgr-trash/abc",
]


@pytest.mark.parametrize("path", BAD)
def test_bad_paths_are_refused_by_text(path):
    with pytest.raises(PathError):
        normalize(path)


def test_trailing_slash_is_dropped():
    assert normalize("artist/album/") == "artist/album"


def test_symlink_out_of_the_root_is_refused(root, canary):
    os.symlink(canary, root / "escape")
    with pytest.raises(PathError, match="symlink"):
        resolve(root, "escape/nested")


@pytest.mark.parametrize("path", BAD + ["escape", "escape/nested", "loop/x"])
def test_every_operation_refuses_bad_paths_and_the_canary_survives(cache, root, canary, path):
    os.symlink(canary, root / "escape")
    os.symlink(root / "loop", root / "loop")  # a symlink loop
    for op in (
        lambda: cache.register(path),
        lambda: cache.remove(path, remove_files=True),
        lambda: cache.info(path),
    ):
        with pytest.raises((PathError, NotOnDisk, NotTracked)):
            op()
    try:
        assert cache.access(path)["hit"] is False  # an access checks text only: a miss
    except PathError:
        pass
    assert cache.store.count_entries() == 0


def test_a_symlink_entry_is_not_registered_and_its_target_survives(cache, root, canary):
    os.symlink(canary, root / "link")
    with pytest.raises(PathError, match="symlink"):
        cache.register("link")


def test_unicode_names_in_both_normal_forms_are_distinct_entries(cache, root):
    nfc = unicodedata.normalize("NFC", "Björk")
    nfd = unicodedata.normalize("NFD", "Björk")
    make_tree(root, nfc)
    make_tree(root, nfd, files=2)
    assert cache.register(nfc)["file_count"] == 1
    assert cache.register(nfd)["file_count"] == 2
    assert cache.store.count_entries() == 2
    cache.remove(nfd, remove_files=True)
    assert (root / nfc).is_dir() and not (root / nfd).exists()


def test_a_long_name_is_refused_clearly(cache):
    with pytest.raises(PathError, match="longer than"):
        cache.register("a" * 4096)


def test_a_huge_path_is_not_quoted_whole_in_its_refusal():
    # '/' + 10 MB was quoted whole as absolute: a 10 MB log line, a 20 MB task result.
    for path in ("/" + "a" * 10_000_000, "\\" + "b" * 1_000_000, "/" * 100_000):
        with pytest.raises(PathError) as err:
            normalize(path)
        assert str(err.value) == "path is longer than 4096 bytes"
