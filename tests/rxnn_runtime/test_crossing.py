"""One hop per batch: items waiting cross in one drain, and the asyncio side polls instead of being woken per item."""

import asyncio
import threading
import time

from reactivex.scheduler import EventLoopScheduler
from reactivex.subject import Subject

from rxnn_runtime.crossing import Crossing
from rxnn_runtime.event_bridge import _LoopScheduler


def test_items_that_wait_cross_in_one_drain_in_order():
    lane = EventLoopScheduler()
    source = Subject()
    drains: list[list[int]] = []
    done = threading.Event()

    def drain(items):
        drains.append(items)
        if sum(map(len, drains)) == 50:
            done.set()

    crossing = Crossing(source, lane, drain)
    blocked, release = threading.Event(), threading.Event()
    lane.schedule(lambda *_: (blocked.set(), release.wait(10)))  # the lane is busy while the items arrive
    try:
        assert blocked.wait(10)
        for i in range(50):
            source.on_next(i)
        release.set()
        assert done.wait(10)
        # observe_on alone would run one scheduled action per item; here the 50 waiting items are one drain.
        assert drains == [list(range(50))]
    finally:
        crossing.dispose()
        lane.dispose()


async def test_asyncio_side_polls_while_items_keep_coming_then_goes_back_to_ticks():
    loop = asyncio.get_running_loop()
    source = Subject()
    got: list[int] = []
    ticks = 0
    scheduler = _LoopScheduler(loop)
    schedule = scheduler.schedule

    loop_thread = threading.get_ident()

    def counting_schedule(action, state=None):  # ticks from the source's thread (observe_on also re-schedules
        nonlocal ticks                           # itself from the loop's own thread after each action)
        if threading.get_ident() != loop_thread:
            ticks += 1
        return schedule(action, state)

    scheduler.schedule = counting_schedule
    crossing = Crossing(source, scheduler, got.extend, rearm=lambda cb: loop.call_later(0.001, cb), idle_polls=2)
    try:
        feeder = threading.Thread(target=lambda: [(source.on_next(i), time.sleep(0.0005)) for i in range(40)])
        feeder.start()
        await asyncio.to_thread(feeder.join)
        for _ in range(200):
            if len(got) == 40:
                break
            await asyncio.sleep(0.005)
        assert got == list(range(40))
        assert ticks < 40  # polled, not woken once per item
        await asyncio.sleep(0.05)  # idle polls run out: the next item needs a tick again
        before = ticks
        await asyncio.to_thread(source.on_next, 40)
        for _ in range(200):
            if got[-1] == 40:
                break
            await asyncio.sleep(0.005)
        assert got[-1] == 40 and ticks == before + 1
    finally:
        crossing.dispose()



def test_an_urgent_item_ticks_at_once_while_the_drain_polls_and_polls_stay_one_chain():
    """While the drain polls, items wait for the next poll; an item marked urgent sends one tick at once (its drain
    takes everything waiting), and that drain arms no second poll: one poll chain at a time."""
    from reactivex.scheduler import ImmediateScheduler

    source = Subject()
    drains: list[list[int]] = []
    polls: list = []
    crossing = Crossing(source, ImmediateScheduler(), drains.append, rearm=polls.append, idle_polls=3,
                        urgent=lambda item: item < 0)
    try:
        source.on_next(1)  # idle: ticks, drained at once (the immediate scheduler), and polling starts
        assert drains == [[1]] and len(polls) == 1
        source.on_next(2)  # polling: waits for the poll
        assert drains == [[1]]
        source.on_next(-3)  # urgent: a tick now, taking 2 with it
        assert drains == [[1], [2, -3]] and len(polls) == 1
        source.on_next(4)
        polls.pop()()  # the poll runs: takes 4 and arms the next one
        assert drains == [[1], [2, -3], [4]] and len(polls) == 1
        for _ in range(4):  # idle polls run out: polling stops, and the next item ticks again
            polls.pop()()
        assert not polls
        source.on_next(5)
        assert drains[-1] == [5] and len(polls) == 1
    finally:
        crossing.dispose()
