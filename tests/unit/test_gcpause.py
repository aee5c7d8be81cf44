"""``cyclic_gc_paused``: the cyclic collector is off inside, back on when the last holder
leaves (threads overlap), and left off if it was off before."""

from __future__ import annotations

import gc
import threading

from collector.gcpause import cyclic_gc_paused


def test_paused_inside_and_enabled_after() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()                 # the outer holder is still inside
    assert gc.isenabled()


def test_enabled_again_after_an_exception() -> None:
    try:
        with cyclic_gc_paused():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.isenabled()


def test_overlapping_threads_enable_it_when_the_last_leaves() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with cyclic_gc_paused():
            first_in.set()
            second_in.wait(5)
        seen["after first left"] = gc.isenabled()
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with cyclic_gc_paused():
            second_in.set()
            first_out.wait(5)
            seen["inside second"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after first left": False, "inside second": False}
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
