"""The service exempts its long-lived heap from the garbage collector's full scans (serving.service)."""

from __future__ import annotations

import gc
import weakref

from serving.service import freeze_long_lived_objects


class _Node:
    """An object that can sit in a reference cycle (only the cyclic collector frees those)."""


def test_survivors_are_frozen_and_a_replaced_models_cycles_are_freed_at_the_next_freeze() -> None:
    try:
        node = _Node()
        node.self = node  # a cycle, as model objects hold (booster <-> bundle, frames, ...)
        alive = weakref.ref(node)
        freeze_long_lived_objects()
        assert gc.get_freeze_count() > 0

        del node  # what a reload does to the old model set
        gc.collect()
        assert alive() is not None, "a frozen cycle is skipped by collections until the next freeze"

        freeze_long_lived_objects()  # the reload's own freeze
        assert alive() is None
    finally:
        gc.unfreeze()
