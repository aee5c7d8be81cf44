"""``bulk_gc``: inside, the heap is frozen and young collections are rarer; the settings
come back when the last user leaves (threads overlap: a poll and a web report), also
after an exception."""

from __future__ import annotations

import gc
import threading

from collector.bulkgc import BULK_GC_THRESHOLD, bulk_gc


def test_settings_inside_and_restored_after() -> None:
    before = gc.get_threshold()
    with bulk_gc():
        assert gc.get_threshold()[0] == max(before[0], BULK_GC_THRESHOLD)
        assert gc.get_freeze_count() > 0
        with bulk_gc():
            assert gc.get_threshold()[0] == max(before[0], BULK_GC_THRESHOLD)
        assert gc.get_freeze_count() > 0          # the outer user is still inside
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_restored_after_an_exception() -> None:
    before = gc.get_threshold()
    try:
        with bulk_gc():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_overlapping_threads_restore_when_the_last_leaves() -> None:
    before = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[int, ...]] = {}

    def first() -> None:
        with bulk_gc():
            first_in.set()
            second_in.wait(5)
        seen["after first left"] = gc.get_threshold()
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with bulk_gc():
            second_in.set()
            first_out.wait(5)
            seen["inside second"] = gc.get_threshold()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    bulk = (max(before[0], BULK_GC_THRESHOLD), *before[1:])
    assert seen == {"after first left": bulk, "inside second": bulk}
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_objects_made_inside_are_still_freed() -> None:
    import weakref

    class Node:
        pass

    with bulk_gc():
        node = Node()
        ref = weakref.ref(node)
        del node                                   # acyclic: reference counting frees it
        assert ref() is None
