"""`InPlaceCommits` on its own: oldest first, stopping at the first pass still running, waiting when asked, a
failed pass or store failing each of its commits, and what is left saved at dispose."""

from types import SimpleNamespace

from runtime_helpers import FakePass

from rxnn_runtime.in_place_commits import InPlaceCommits


class _Store:
    def __init__(self, refuse: str = ""):
        self.saved: list[str] = []
        self.refuse = refuse

    def save_many(self, states):
        errors = []
        for state in states:
            if state.session_id == self.refuse:
                errors.append("disk full")
            else:
                self.saved.append(state.session_id)
                errors.append(None)
        return errors


def _commits(*sids):
    return [(f"turn-{sid}", SimpleNamespace(session_id=sid)) for sid in sids]


def test_settles_oldest_first_and_stops_at_a_running_pass():
    store = _Store()
    queue = InPlaceCommits(store)
    first, second = FakePass(), FakePass()
    queue.add(_commits("a", "b"), first)
    queue.add(_commits("c"), second)
    second.done = True
    assert queue.settle(wait=False) == [] and store.saved == [] and queue  # "c" waits behind "a", "b"
    first.done = True
    saved = queue.settle(wait=False)
    assert [(turn, state.session_id, error) for turn, state, error in saved] == [
        ("turn-a", "a", None), ("turn-b", "b", None), ("turn-c", "c", None)]
    assert store.saved == ["a", "b", "c"] and not queue
    assert first.waited == second.waited == 0  # found done: not synchronised on (that would let the GIL go)
    queue.add(_commits("d"))  # a pass run synchronously (no event): saved at the next settle
    assert [state.session_id for _, state, _ in queue.settle(wait=False)] == ["d"]


def test_wait_synchronizes_and_failures_fail_every_commit_of_their_job():
    store = _Store(refuse="y")
    queue = InPlaceCommits(store)
    running, broken = FakePass(), FakePass(fails=True)
    queue.add(_commits("x", "y"), running)
    queue.add(_commits("z"), broken)
    saved = queue.settle(wait=True)
    assert running.waited == 1 and broken.waited == 1
    assert [(state.session_id, error) for _, state, error in saved[:2]] == [("x", None), ("y", "disk full")]
    (_, state, error), = saved[2:]
    assert state.session_id == "z" and "device-side assert" in error
    assert store.saved == ["x"]


def test_save_left_saves_without_announcing():
    store = _Store()
    queue = InPlaceCommits(store)
    left = FakePass()
    queue.add(_commits("e"), left)
    queue.save_left()
    assert left.waited == 1 and store.saved == ["e"] and not queue
    assert queue.settle(wait=True) == []
