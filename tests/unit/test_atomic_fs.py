"""``platform.atomic_fs``: Tune's storage writes are atomic, and ``--resume`` refuses a
damaged Tune state by name (a driver killed mid-sync used to leave a 0-byte
``search_gen_state`` and Tune then restarted the sweep from nothing)."""

from __future__ import annotations

import os
import pickle

import pyarrow.fs as pafs
import pytest

from vldistill.platform.atomic_fs import _AtomicFile, atomic_local_fs
from vldistill.platform.sweep import SweepError, check_tune_state


def test_copy_files_into_the_atomic_fs_gives_the_same_bytes(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    blob = os.urandom(3 << 20)
    (src / "sub" / "last.pt").write_bytes(blob)
    (src / "state.json").write_text('{"a": 1}')
    pafs.copy_files(str(src), str(tmp_path / "dst"), destination_filesystem=atomic_local_fs(),
                    chunk_size=1 << 20)  # several chunks per file
    assert (tmp_path / "dst" / "sub" / "last.pt").read_bytes() == blob
    assert (tmp_path / "dst" / "state.json").read_text() == '{"a": 1}'
    assert sorted(p.name for p in (tmp_path / "dst").rglob("*")) == ["last.pt", "state.json", "sub"]


def test_a_write_cut_short_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "search_gen_state-1.json"
    target.write_bytes(b"complete previous state")
    half = _AtomicFile(str(target))
    half.write(b"half of the new st")  # the process dies here: close() never runs
    assert target.read_bytes() == b"complete previous state"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".search_gen_state-1.json.part-")
    half.close()
    assert target.read_bytes() == b"half of the new st" and len(list(tmp_path.iterdir())) == 1


def test_the_filesystem_pickles_into_trials():
    fs = pickle.loads(pickle.dumps(atomic_local_fs()))
    assert fs.type_name == "py::vldistill-atomic-local" and fs == atomic_local_fs()


def test_resume_refuses_a_damaged_tune_state_by_name(tmp_path):
    (tmp_path / "experiment_state-2026-12-06_21-10-58.json").write_text('{"trial_data": []}')
    (tmp_path / "search_gen_state-2026-12-06_21-10-58.json").write_bytes(b"")
    with pytest.raises(SweepError, match=r"search_gen_state-2026-12-06_21-10-58\.json is damaged"):
        check_tune_state(tmp_path)
    (tmp_path / "search_gen_state-2026-12-06_21-10-58.json").write_bytes(pickle.dumps({"counter": 2}))
    check_tune_state(tmp_path)  # intact: no error


def test_a_checkpoint_on_the_atomic_fs_is_persisted_as_a_hard_link(tmp_path):
    """``checkpoint_source``: Ray's persist copy becomes ``copy_file``, a link of the same
    inode; the next epoch's checkpoint (written to a new file and renamed, as
    ``save_checkpoint`` does) leaves the persisted one's bytes alone."""
    src = tmp_path / "work"
    src.mkdir()
    (src / "last.pt").write_bytes(b"epoch 1")
    fs = atomic_local_fs()
    pafs.copy_files(str(src), str(tmp_path / "checkpoint_000000"), source_filesystem=fs,
                    destination_filesystem=fs)
    kept = tmp_path / "checkpoint_000000" / "last.pt"
    assert kept.stat().st_ino == (src / "last.pt").stat().st_ino
    (src / "last.pt.tmp").write_bytes(b"epoch 2")
    os.replace(src / "last.pt.tmp", src / "last.pt")
    assert kept.read_bytes() == b"epoch 1"
    assert [p.name for p in kept.parent.iterdir()] == ["last.pt"]
