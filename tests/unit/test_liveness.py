"""/livez's verdict (worker.liveness): one message timing out at every try for the window."""

from __future__ import annotations

import grpc

from tests.unit.fakes import FakeClock, FakeRpcError
from tests.unit.test_pipeline import MAX_ATTEMPTS, FakeHandler, cloud_event, harness_with
from worker.liveness import Liveness
from worker.outcomes import Transient

WINDOW = 300.0


def deadline() -> Transient:
    """What the gateway raises when the sidecar's deadline passes (its cause: the RpcError)."""
    try:
        raise Transient("start: deadline") from FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)
    except Transient as error:
        return error


def unavailable() -> Transient:
    try:
        raise Transient("sidecar down") from FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    except Transient as error:
        return error


def liveness(clock: FakeClock) -> Liveness:
    return Liveness(WINDOW, clock=clock.monotonic, stale_seconds=120)


def test_live_without_failures() -> None:
    assert liveness(FakeClock()).check().ok


def test_one_message_timing_out_for_the_window_is_not_live() -> None:
    clock = FakeClock()
    live = liveness(clock)
    for _ in range(30):  # a try every 10 s (the resiliency policy's cap), 290 s in all
        live.failed("m1", deadline())
        assert live.check().ok
        clock.sleep(10)
    live.failed("m1", deadline())  # 300 s after the first
    verdict = live.check()
    assert not verdict.ok
    assert "m1" in verdict.reason and "31 tries" in verdict.reason


def test_a_success_ends_the_streak() -> None:
    clock = FakeClock()
    live = liveness(clock)
    live.failed("m1", deadline())
    clock.sleep(250)
    live.failed("m1", deadline())
    live.done("m1")  # handled at last
    clock.sleep(100)
    live.failed("m1", deadline())  # a new streak, later
    assert live.check().ok


def test_other_messages_succeeding_do_not_hide_a_stuck_one() -> None:
    """The wedge stalls some instances only: others go through meanwhile."""
    clock = FakeClock()
    live = liveness(clock)
    for n in range(31):
        live.failed("stuck", deadline())
        live.done(f"fine-{n}")
        clock.sleep(10)
    assert not live.check().ok


def test_other_faults_neither_count_nor_end_a_streak() -> None:
    clock = FakeClock()
    live = liveness(clock)
    for _ in range(3):  # 0, 100, 200 s
        live.failed("m1", deadline())
        clock.sleep(50)
        live.failed("m1", unavailable())  # the sidecar restarting, say
        clock.sleep(50)
    live.failed("m1", deadline())  # 300 s
    assert not live.check().ok
    clock2 = FakeClock()
    only_unavailable = liveness(clock2)
    for _ in range(60):
        only_unavailable.failed("m2", unavailable())
        clock2.sleep(10)
    assert only_unavailable.check().ok  # not healed by a restart of the pod: not counted


def test_a_message_no_longer_tried_is_forgotten() -> None:
    """Dropped by the sidecar, taken by another replica: it stops counting."""
    clock = FakeClock()
    live = liveness(clock)
    live.failed("m1", deadline())
    clock.sleep(100)
    live.failed("m1", deadline())
    clock.sleep(121)  # no try for longer than the stale limit
    live.failed("m1", deadline())  # a fresh streak
    clock.sleep(100)
    live.failed("m1", deadline())
    assert live.check().ok
    clock.sleep(200)
    assert live.check().ok  # and it is not tried again: forgotten


def test_a_plain_timeout_counts_like_deadline_exceeded() -> None:
    clock = FakeClock()
    live = liveness(clock)
    for _ in range(4):  # 0, 100, 200, 300 s
        try:
            raise Transient("timed out") from TimeoutError()
        except Transient as error:
            live.failed("m1", error)
        clock.sleep(100)
    clock.sleep(-100)
    assert not live.check().ok


def test_the_pipeline_reports_tries_and_ends() -> None:
    """Through the pipeline: tries that time out count, a handled message ends its streak,
    and giving up on one does too (MAX_ATTEMPTS tries, 3, 150 s apart)."""
    clock = FakeClock()
    live = Liveness(WINDOW / 2, clock=clock.monotonic, stale_seconds=WINDOW)
    harness = harness_with(liveness=live)
    handler = FakeHandler(errors=[deadline(), deadline()])
    assert harness.deliver(handler, cloud_event()) == "retry"
    clock.sleep(WINDOW / 2)
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert not live.check().ok
    assert harness.deliver(handler, cloud_event()) == "success"
    assert live.check().ok

    stuck = FakeHandler(errors=[deadline()] * MAX_ATTEMPTS)
    for _ in range(MAX_ATTEMPTS - 1):
        assert harness.deliver(stuck, cloud_event(message_id="m2")) == "retry"
        clock.sleep(WINDOW / 2)
    assert not live.check().ok
    assert harness.deliver(stuck, cloud_event(message_id="m2")) == "drop"  # gave up
    assert live.check().ok
