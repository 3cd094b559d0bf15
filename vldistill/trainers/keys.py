"""The one content key of every cache entry: the world, teachers, text, the image store,
the view cache, P3's synthetic sets, teacher metrics, latency, storage copies.

``content_key(blob)`` is the first ``n`` hex digits of the SHA-256 of ``blob``: bytes as
they are, a string as UTF-8, anything else as its canonical JSON (sorted keys). Each entry
decides *what* identifies it (its recipe, its inputs' paths and sizes, a version number)
and passes exactly that; this module decides *how* it becomes a name. Keys made before this
helper existed are unchanged (each caller passes the very blob it hashed before).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_key(blob: Any, n: int = 16) -> str:
    """Hex digest prefix naming the cache entry that ``blob`` identifies."""
    if isinstance(blob, str):
        blob = blob.encode()
    elif not isinstance(blob, (bytes, bytearray)):
        blob = json.dumps(blob, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
