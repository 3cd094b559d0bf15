"""Local storage for Ray Tune/Train whose every file write is atomic.

Ray persists everything the sweep resumes from -- the experiment state
(``experiment_state-*.json``), the search algorithm's state (``search_gen_state-*.json``,
``searcher-state-*.pkl``), each trial's checkpoints -- by copying files from a staging
directory into ``storage_path`` with ``pyarrow.fs.copy_files``, which writes each
destination file in place. A driver killed in the middle of that copy (SIGKILL, OOM, a lost
head node) leaves a truncated file; ``Tuner.restore`` then fails to load it, logs "Failed
to restore the run state ... Restarting experiment" and starts the search over: finished
trials forgotten, running ones lost, and new trials created without the sweep's constant
config (seen in ``tests/reliability/test_faults.py``: a 0-byte ``search_gen_state``).

:func:`atomic_local_fs` is the public cure (``RunConfig(storage_filesystem=...)``,
``Tuner.restore(storage_filesystem=...)``): a ``pyarrow.fs.PyFileSystem`` over the local
disk whose output streams write ``.<name>.part-<pid>`` next to the target and
``os.replace`` it on close. A reader sees the previous complete file or the new complete
file, never a part. Everything else is delegated to ``pyarrow.fs.LocalFileSystem``.

Speed: a stream into this filesystem goes through Python ``write`` calls (measured ~3x
slower than Ray's native local copy for a 135-MB checkpoint), so a trial's checkpoints take
another public path: :func:`checkpoint_source` gives Ray the checkpoint on this same
filesystem, ``copy_files`` then calls :meth:`AtomicLocalHandler.copy_file`, which
hard-links (the speed-up an earlier private patch of Ray's copy function gave; that patch is
gone). ``benchmarks/checkpoint_persist.py`` measures the ways side by side.
"""

from __future__ import annotations

import os
import shutil

import pyarrow
import pyarrow.fs as pafs

PART = ".part-"


class _AtomicFile:
    """A binary writer that becomes ``path`` only when closed without an error."""

    def __init__(self, path: str):
        self._path = path
        head, name = os.path.split(path)
        self._tmp = os.path.join(head, f".{name}{PART}{os.getpid()}")
        self._f = open(self._tmp, "wb")  # noqa: SIM115  (closed in close())
        self.closed = False
        self._failed = False

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except BaseException:
            self._failed = True  # close() then drops the part instead of publishing it
            raise

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._f.close()
            if not self._failed:
                os.replace(self._tmp, self._path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """``pyarrow.fs.FileSystemHandler``: the local disk, every written file atomic."""

    def __init__(self):
        self._fs = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __hash__(self) -> int:
        return hash(AtomicLocalHandler)

    def __reduce__(self):  # Ray pickles the storage filesystem into every trial
        return AtomicLocalHandler, ()

    def get_type_name(self) -> str:
        return "vldistill-atomic-local"

    def normalize_path(self, path):
        return self._fs.normalize_path(path)

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path):
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._fs.move(src, dest)

    def copy_file(self, src, dest):
        """Called by ``pyarrow.fs.copy_files`` when source and destination are both this
        filesystem (a trial's checkpoint: ``checkpoint_source``): a hard link, else a
        kernel copy, published atomically. Linking is safe because no checkpoint file is
        ever rewritten in place (``save_checkpoint`` writes a new file and renames it)."""
        head, name = os.path.split(dest)
        os.makedirs(head, exist_ok=True)
        tmp = os.path.join(head, f".{name}{PART}{os.getpid()}")
        try:
            try:
                os.link(src, tmp)
            except OSError:  # another device, or no links here: copy
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def open_input_stream(self, path):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pyarrow.PythonFile(_AtomicFile(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path)


def atomic_local_fs() -> pafs.PyFileSystem:
    """The storage filesystem for a sweep whose ``storage_path`` is a local directory."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def checkpoint_source(directory: str):
    """A ``ray.train.Checkpoint`` of a trial's local checkpoint directory, on this
    filesystem: Ray's persist copy into local storage becomes :meth:`copy_file` (a hard
    link) instead of a byte copy of every file. Object-storage destinations still copy."""
    from ray.train import Checkpoint

    return Checkpoint(directory, filesystem=atomic_local_fs())
