"""``trainers.keys.content_key``: one way to name cache entries, and the names of entries
written before it existed are unchanged (a changed key silently orphans a user's cache)."""

from __future__ import annotations

import hashlib
import json

from vldistill.trainers.data.world import WorldSpec
from vldistill.trainers.keys import content_key


def test_bytes_strings_and_json_name_entries_as_before():
    blob = {"b": [1, 2], "a": "x"}
    assert content_key(blob) == hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    assert content_key("name|abc") == hashlib.sha256(b"name|abc").hexdigest()[:16]
    assert content_key(b"\x00\x01", 24) == hashlib.sha256(b"\x00\x01").hexdigest()[:24]
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_the_worlds_keep_their_cache_names():
    assert WorldSpec().key() == "b795f704eb47207e"  # the default world (the README's main job)
    assert WorldSpec(per_class=16, shift_per_class=6).key() == "7dfba0702a8bc6b1"  # experiment=smoke
