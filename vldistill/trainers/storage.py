"""Object-store locations (``s3://``, ``gs://``, any URI pyarrow understands) for sweeps and caches.

A sweep directory and the cache may be URIs so that nothing depends on the head node's
disk. Everything that needs POSIX semantics (``flock``, appended JSON lines, the Optuna
journal, memory-mapped teacher targets) keeps working on a *local working copy*, and this
module copies files between that copy and the URI with ``pyarrow.fs`` (the file-system
layer Ray Tune/Train use for their own ``storage_path``):

* **sweep directory** (``out_dir=s3://bucket/sweeps/NAME``): Tune and every inner
  TorchTrainer write their experiment state and checkpoints straight to the URI; the
  driver keeps ``trials.jsonl``, ``optuna.journal``, the resolved space and the report in
  a local staging directory and uploads them after every finished trial and at the end.
  ``--resume s3://...`` downloads them into a fresh staging directory first.
* **cache** (``cache_dir=s3://bucket/cache``): each entry (``worlds/<key>``,
  ``teachers/<key>``, ``teacher_eval/<file>``, ``teacher_cache/<key>``, ...) is written
  locally (atomically, as always), uploaded by the sweep driver once it is complete, and
  then marked complete by a ``<entry>.done`` object written *after* its files. A node
  downloads only entries that have their marker, so a half-uploaded entry (a driver killed
  mid-upload) is never read; it is uploaded again by the next driver that has it.

Credentials never pass through vldistill: pyarrow reads them on each node from the usual
places (``AWS_*`` variables / instance roles, ``GOOGLE_APPLICATION_CREDENTIALS``), and
only the URI string travels in configs and trial parameters. ``AWS_ENDPOINT_URL`` selects
an S3-compatible endpoint (MinIO, the tests' moto server).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from vldistill.trainers.keys import content_key

log = logging.getLogger(__name__)
DONE = ".done"


def is_uri(location: object) -> bool:
    """``scheme://...`` (``s3://``, ``gs://``, ``file://``...) rather than a plain path."""
    return isinstance(location, (str, os.PathLike)) and "://" in str(location)


def _fs(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow.lib.ArrowInvalid / OSError: say which URI and why
        raise ValueError(f"{uri}: not a storage URI pyarrow can open ({e})") from None


def local_copy_dir(uri: str, kind: str) -> Path:
    """Where this node keeps its working copy of ``uri`` (``$VLDISTILL_STAGING`` or
    ``~/.cache/vldistill/staging``, one directory per URI and kind)."""
    root = Path(os.environ.get("VLDISTILL_STAGING") or Path.home() / ".cache" / "vldistill" / "staging")
    digest = content_key(uri.rstrip("/"))
    return root.expanduser() / f"{kind}-{digest}"


class Remote:
    """A directory at a URI, with the few operations the sweep and the cache need."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.path = _fs(self.uri)

    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._p(rel)).type != pafs.FileType.NotFound

    def children(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (empty if it does not exist)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self._p(rel), allow_not_found=True, recursive=False)
        return sorted(Path(info.path).name for info in self.fs.get_file_info(sel))

    def put(self, local: Path, rel: str) -> None:
        """Upload a file or a directory tree to ``rel``."""
        import pyarrow.fs as pafs

        local = Path(local)
        if local.is_dir():
            self.fs.create_dir(self._p(rel), recursive=True)
            pafs.copy_files(str(local), self._p(rel), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        else:
            parent = self._p(rel).rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            pafs.copy_files(str(local), self._p(rel), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def get(self, rel: str, local: Path) -> None:
        """Download the file or tree at ``rel`` to ``local`` (through a temporary sibling, then
        renamed: a reader never sees half of it)."""
        import shutil

        import pyarrow.fs as pafs

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.fs.get_file_info(self._p(rel)).type == pafs.FileType.Directory:
            tmp.mkdir(parents=True)  # copy_files writes a tree under an existing directory
        pafs.copy_files(self._p(rel), str(tmp), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        if local.exists():  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            return
        os.replace(tmp, local)

    def write_text(self, rel: str, text: str) -> None:
        """Write a small object. Never empty: some S3-compatible servers reject the empty
        multipart upload pyarrow's output stream makes of zero bytes."""
        if not text:
            raise ValueError("write_text: empty objects are not written (see docstring)")
        parent = self._p(rel).rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self._p(rel)) as f:
            f.write(text.encode())

    def probe(self) -> None:
        """Write and delete a small object: raises ``OSError`` now (missing bucket, no
        credentials, no permission) rather than after hours of training."""
        rel = f".vldistill-probe-{os.getpid()}"
        self.write_text(rel, "probe\n")
        self.fs.delete_file(self._p(rel))

    def join(self, rel: str) -> str:
        return f"{self.uri}/{rel}"


# ----- sweep directories -------------------------------------------------------------------


def push_files(remote: Remote, local_dir: Path, names: Iterable[str]) -> None:
    """Upload the named files/directories of ``local_dir`` that exist (later wins)."""
    for name in names:
        path = Path(local_dir) / name
        if path.exists():
            remote.put(path, name)


def pull_sweep(remote: Remote, local_dir: Path, skip: Iterable[str]) -> None:
    """Download a sweep directory's driver files (everything but ``skip``) into ``local_dir``."""
    import shutil

    skip = set(skip)
    local_dir = Path(local_dir)
    for name in remote.children():
        if name in skip or name.startswith("."):
            continue
        target = local_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        remote.get(name, target)


# ----- caches ------------------------------------------------------------------------------


def _entries(root: Path) -> list[str]:
    """``<subdir>/<name>`` of every complete local cache entry (tmp names excluded)."""
    out = []
    for sub in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if Path(root).is_dir() else []:
        out += [f"{sub.name}/{e.name}" for e in sorted(sub.iterdir())
                if not e.name.startswith(".") and ".tmp" not in e.name and not e.name.endswith(DONE)
                # a view cache / image store is complete once its meta.json is written (last)
                and (sub.name not in ("teacher_cache", "images") or (e / "meta.json").is_file())]
    return out


def pull_cache(uri: str) -> Path:
    """This node's copy of the cache at ``uri``, with every complete remote entry present."""
    remote, local = Remote(uri), local_copy_dir(uri, "cache")
    local.mkdir(parents=True, exist_ok=True)
    for sub in remote.children():
        names = set(remote.children(sub))
        for name in sorted(n for n in names if not n.endswith(DONE) and n + DONE in names):
            if not (local / sub / name).exists():
                _pull_once(remote, f"{sub}/{name}", local)
    return local


def _pull_once(remote: Remote, entry: str, local: Path) -> None:
    """Download one entry to this node unless another process on the node already did:
    an exclusive ``flock`` per entry, so the trials of a node fetch it once between them
    (the others wait, then read the same local copy)."""
    import fcntl

    locks = local / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / (entry.replace("/", "-") + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (local / entry).exists():
            log.info("cache: downloading %s from %s", entry, remote.uri)
            remote.get(entry, local / entry)


def push_cache(uri: str, local: Path) -> list[str]:
    """Upload every complete local entry the URI lacks (files first, then its marker)."""
    remote, pushed = Remote(uri), []
    for entry in _entries(local):
        if not remote.exists(entry + DONE):
            log.info("cache: uploading %s to %s", entry, uri)
            remote.put(Path(local) / entry, entry)
            remote.write_text(entry + DONE, "done\n")
            pushed.append(entry)
    return pushed
