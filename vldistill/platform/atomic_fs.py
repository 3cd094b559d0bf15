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

Cost: the copy goes through Python ``write`` calls of Ray's 64 MiB chunks, which is the
same byte copy as before. (Before this, a patch of a private Ray function hard-linked
checkpoints instead of copying them; it is gone -- see ``docs/benchmarks.md`` (b) for the
measured cost of the copy.)
"""

from __future__ import annotations

import os

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
        with self._fs.open_input_stream(src) as fin:
            out = _AtomicFile(dest)
            try:
                while chunk := fin.read(16 << 20):
                    out.write(chunk)
            except BaseException:
                out._failed = True
                raise
            finally:
                out.close()

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
