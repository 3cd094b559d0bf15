"""``sweep.link_local_checkpoints``: Ray persists a trial's per-epoch checkpoint into local
storage by hard links instead of a 135-MB copy, and the persisted checkpoint keeps its bytes
when the trial writes its next one (``save_checkpoint`` replaces, never rewrites)."""

from __future__ import annotations

import errno
import os

import pytest
import torch

pafs = pytest.importorskip("pyarrow.fs")
rts = pytest.importorskip("ray.train._internal.storage")

from vldistill.platform.sweep import link_local_checkpoints  # noqa: E402
from vldistill.trainers.loop import CKPT_NAME, save_checkpoint  # noqa: E402


@pytest.fixture
def linking(monkeypatch):
    """The patched copy function; the original is restored after the test."""
    original = rts._pyarrow_fs_copy_files
    monkeypatch.setattr(rts, "_pyarrow_fs_copy_files", original)
    link_local_checkpoints()
    return original


def _persist(src, dst, dst_fs=None):
    local = pafs.LocalFileSystem()
    rts._pyarrow_fs_copy_files(str(src), str(dst), source_filesystem=local,
                               destination_filesystem=dst_fs or local)


def _state(value: float) -> dict:
    return {"student": {"w": torch.full((64, 64), value)}, "epoch": int(value)}


def test_a_persisted_checkpoint_is_a_link_that_keeps_its_bytes_after_the_next_save(linking, tmp_path):
    work, storage = tmp_path / "work", tmp_path / "storage" / "checkpoint_000000"
    save_checkpoint(_state(1.0), work)
    (work / "extra").mkdir()
    (work / "extra" / "note.txt").write_text("epoch 1")
    _persist(work, storage)
    assert os.stat(storage / CKPT_NAME).st_ino == os.stat(work / CKPT_NAME).st_ino  # no copy
    assert (storage / "extra" / "note.txt").read_text() == "epoch 1"
    save_checkpoint(_state(2.0), work)  # the trial's next epoch
    assert os.stat(storage / CKPT_NAME).st_ino != os.stat(work / CKPT_NAME).st_ino
    kept = torch.load(storage / CKPT_NAME, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["student"]["w"], torch.full((64, 64), 1.0))
    assert torch.load(work / CKPT_NAME, weights_only=True)["epoch"] == 2
    # persisting again over an existing checkpoint directory replaces its files
    _persist(work, storage)
    assert torch.load(storage / CKPT_NAME, weights_only=True)["epoch"] == 2


def test_a_link_that_fails_undoes_its_links_and_copies(linking, tmp_path, monkeypatch):
    work, storage = tmp_path / "work", tmp_path / "storage"
    for name in ("a.pt", "b.pt", "c.pt"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(name.encode() * 1000)
    calls = []
    real_link = os.link

    def link_then_fail(src, dst):  # the first file links, the second is on "another device"
        calls.append(dst)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_then_fail)
    _persist(work, storage)
    assert len(calls) == 2
    for name in ("a.pt", "b.pt", "c.pt"):
        assert (storage / name).read_bytes() == name.encode() * 1000
        assert os.stat(storage / name).st_ino != os.stat(work / name).st_ino  # copies, all of them


def test_only_plain_local_filesystems_link(linking, tmp_path):
    work, storage = tmp_path / "work", tmp_path / "storage"
    save_checkpoint(_state(3.0), work)
    (tmp_path / "storage").mkdir()
    sub = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())  # not LocalFileSystem itself
    _persist(work, "storage", dst_fs=sub)
    assert os.stat(storage / CKPT_NAME).st_ino != os.stat(work / CKPT_NAME).st_ino
    assert torch.load(storage / CKPT_NAME, weights_only=True)["epoch"] == 3


def test_linking_is_installed_once(linking):
    first = rts._pyarrow_fs_copy_files
    assert first is not linking and first._vldistill_links
    link_local_checkpoints()
    assert rts._pyarrow_fs_copy_files is first
