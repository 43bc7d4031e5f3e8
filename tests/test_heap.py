"""freeze_heap: what is alive at start-up leaves the collector's full passes."""

from __future__ import annotations

import gc

from serve_app.heap import freeze_heap


def test_frozen_objects_are_no_longer_walked_by_a_full_collection() -> None:
    objects = len(gc.get_objects())
    try:
        freeze_heap()
        assert gc.get_freeze_count() >= objects * 0.9
        assert len(gc.get_objects()) < objects * 0.1  # what a full collection walks now
    finally:
        gc.unfreeze()
