"""Writes made at once by many threads go out together; each caller learns its own result."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.groupcommit import GroupCommit


class SlowWrites:
    """Records each call's items; the first call waits until ``release`` is set, so that the
    callers behind it queue up."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail_with: Exception | None = None

    def __call__(self, items: list[int]) -> None:
        self.calls.append(items)
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(5)
        if self.fail_with is not None:
            raise self.fail_with


def test_a_lone_write_goes_out_at_once_alone() -> None:
    writes = SlowWrites()
    writes.release.set()
    GroupCommit(writes).submit(1)
    assert writes.calls == [[1]]


def _submit_behind_a_slow_first(writes: SlowWrites, commit: GroupCommit[int], more: int) -> None:
    """Submit 0, then 1..``more`` while 0's write waits; let it go once all have queued."""
    with ThreadPoolExecutor(more + 1) as pool:
        first = pool.submit(commit.submit, 0)
        assert writes.first_started.wait(5)
        rest = [pool.submit(commit.submit, i) for i in range(1, more + 1)]
        while len(commit._queue) < more:
            threading.Event().wait(0.01)
        writes.release.set()
        for future in [first, *rest]:
            future.result(5)


def test_writes_that_queue_behind_one_go_out_together() -> None:
    writes = SlowWrites()
    _submit_behind_a_slow_first(writes, GroupCommit(writes, max_items=64), 20)
    assert writes.calls[0] == [0]
    assert sorted(writes.calls[1]) == list(range(1, 21))  # one call for the twenty
    assert len(writes.calls) == 2


def test_a_batch_is_cut_at_max_items() -> None:
    writes = SlowWrites()
    _submit_behind_a_slow_first(writes, GroupCommit(writes, max_items=4), 10)
    assert [len(c) for c in writes.calls] == [1, 4, 4, 2]
    assert sorted(i for call in writes.calls for i in call) == list(range(11))


def test_every_caller_of_a_failed_write_gets_its_error_and_later_ones_go_on() -> None:
    writes = SlowWrites()
    commit = GroupCommit(writes)
    writes.fail_with = RuntimeError("store down")
    writes.release.set()
    with pytest.raises(RuntimeError, match="store down"):
        commit.submit(1)
    writes.fail_with = None
    commit.submit(2)
    assert writes.calls == [[1], [2]]
