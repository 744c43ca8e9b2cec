"""The one backoff every repeat goes through (retry.py), and reversals driven by it: blocking
tries spaced on the injected clock, and the non-blocking step a resident loop calls."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_terminal_fakehost import EXPIRY, MID, PAN, PIN, TID, TMK, Act, FakeHost

from tillroll.clock import FakeClock
from tillroll.iso8583.messages import unpack
from tillroll.terminal import HostAddress, LinkResult, Outcome, Terminal, TerminalConfig, TxnState
from tillroll.terminal.retry import AGAIN, Again, Backoff, RetrySchedule, repeat


@given(
    base_s=st.floats(0.0, 10.0),
    cap_extra_s=st.floats(0.0, 100.0),
    failures=st.integers(1, 100_000),
    seed=st.integers(0, 2**32),
)
def test_a_wait_is_within_half_and_all_of_the_capped_exponential(
    base_s: float, cap_extra_s: float, failures: int, seed: int
) -> None:
    b = Backoff(base_s=base_s, cap_s=base_s + cap_extra_s, total_s=60.0)
    ceiling = min(b.cap_s, base_s * 2.0 ** min(failures - 1, 60))
    wait = b.wait_s(failures, random.Random(seed))
    assert ceiling / 2 <= wait <= ceiling <= b.cap_s


def test_waits_double_until_the_cap() -> None:
    b = Backoff(base_s=1.0, cap_s=8.0, total_s=60.0)
    rng = random.Random(1)
    ceilings = [1, 2, 4, 8, 8, 8]
    waits = [b.wait_s(n, rng) for n in range(1, 7)]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert b.wait_s(0, rng) == 0.0


def test_backoff_refuses_a_base_above_its_cap() -> None:
    with pytest.raises(ValueError, match="base_s <= cap_s"):
        Backoff(base_s=2.0, cap_s=1.0, total_s=10.0)


def test_repeat_stops_at_the_first_final_answer_and_waits_on_the_clock() -> None:
    clock = FakeClock()
    start = clock.monotonic()
    calls: list[float] = []

    def attempt(n: int) -> str | Again:
        calls.append(clock.monotonic())
        return "done" if n == 2 else AGAIN

    out = repeat(attempt, tries_max=5, backoff=Backoff(1.0, 8.0, 60.0), clock=clock, rng=random.Random(3))
    assert out == "done" and len(calls) == 3
    gaps = [b - a for a, b in zip([start, *calls], calls, strict=False)]
    assert gaps[0] == 0.0 and 0.5 <= gaps[1] <= 1.0 and 1.0 <= gaps[2] <= 2.0


def test_repeat_gives_up_after_tries_max_or_when_the_total_wait_would_pass_its_bound() -> None:
    clock = FakeClock()
    tries: list[int] = []

    def never(n: int) -> int | Again:
        tries.append(n)
        return AGAIN

    assert (
        repeat(never, tries_max=4, backoff=Backoff(0.1, 1.0, 60.0), clock=clock, rng=random.Random(0))
        is AGAIN
    )
    assert tries == [0, 1, 2, 3]
    tries.clear()
    start = clock.monotonic()
    assert (
        repeat(never, tries_max=50, backoff=Backoff(1.0, 4.0, 5.0), clock=clock, rng=random.Random(0))
        is AGAIN
    )
    assert clock.monotonic() - start <= 5.0 and 2 <= len(tries) < 50


def test_schedule_is_due_at_once_then_after_its_wait_and_forgets_what_finished() -> None:
    s: RetrySchedule[int] = RetrySchedule(Backoff(2.0, 8.0, 60.0), random.Random(5))
    assert s.is_due(1, 100.0) and s.next_due_s([1], 100.0) == 100.0
    due = s.failed(1, 100.0)
    assert 101.0 <= due <= 102.0 and not s.is_due(1, due - 0.01) and s.is_due(1, due)
    assert s.failures(1) == 1 and s.next_due_s([1, 2], 100.0) == 100.0  # 2 never tried: now
    s.keep_only([2])
    assert s.failures(1) == 0 and s.is_due(1, 100.0)
    assert s.next_due_s([], 100.0) is None


# --- reversals on the backoff ----------------------------------------------------------------
# On the scripted fake (no TCP): the tries are timed on the fake clock, and a dead line fails at
# once instead of after a connect timeout, so a night of backoff runs in milliseconds.


class TimedLink:
    """The fake host, noting when (on the injected clock) each request went out."""

    def __init__(self, host: FakeHost, clock: FakeClock) -> None:
        self.host = host
        self.clock = clock
        self.sent: list[tuple[str, float]] = []

    def exchange(self, message: bytes) -> LinkResult:
        self.sent.append((unpack(message).mti, self.clock.monotonic()))
        return self.host.exchange(message)

    def close(self) -> None:
        self.host.close()

    def abort(self) -> None:  # nothing blocks in a fake exchange
        pass

    def times(self, mti: str) -> list[float]:
        return [t for m, t in self.sent if m == mti]


def config(**changes: object) -> TerminalConfig:
    base: dict[str, object] = {"tid": TID, "mid": MID, "tmk": TMK, "host": HostAddress("127.0.0.1", 1)}
    base.update(changes)
    return TerminalConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def link(host: FakeHost, clock: FakeClock) -> TimedLink:
    return TimedLink(host, clock)


@pytest.fixture
def term(tmp_path: Path, link: TimedLink, clock: FakeClock) -> Iterator[Terminal]:
    cfg = config(retry_backoff_s=1.0, retry_backoff_cap_s=8.0, reversal_retries_max=3)
    t = Terminal(cfg, tmp_path / "pos", clock=clock, link=link, rng=random.Random(11))
    yield t
    t.close()


def test_reversal_tries_are_spaced_by_a_growing_backoff_not_back_to_back(
    term: Terminal, host: FakeHost, link: TimedLink
) -> None:
    host.script.extend([Act.DROP_RESPONSE, Act.UNREACHABLE, Act.UNREACHABLE, Act.UNREACHABLE])
    assert term.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSAL_PENDING
    t0, t1, t2 = link.times("0400")
    assert 0.5 <= t1 - t0 <= 1.0 and 1.0 <= t2 - t1 <= 2.0


def test_reverse_step_tries_only_when_due_backs_off_to_the_cap_and_never_drops_it(
    term: Terminal, host: FakeHost, link: TimedLink, clock: FakeClock
) -> None:
    host.script.extend([Act.DROP_RESPONSE, Act.UNREACHABLE, Act.UNREACHABLE, Act.UNREACHABLE])
    term.sale(1250, PAN, EXPIRY, PIN)
    host.unreachable = True  # the line is dead
    sent_before = len(link.sent)
    step = term.reverse_step()
    assert step.pending == 1 and step.reversed == 0 and step.next_due_s is not None
    assert step.next_due_s > clock.monotonic() and len(link.sent) == sent_before  # not due: nothing sent
    gaps: list[float] = []
    for _ in range(12):  # a night of failures, compressed
        assert step.next_due_s is not None
        clock.advance(step.next_due_s - clock.monotonic())
        tried_at = clock.monotonic()
        step = term.reverse_step()
        assert step.pending == 1 and step.next_due_s is not None
        gaps.append(step.next_due_s - tried_at)
    assert all(g <= 8.0 for g in gaps) and gaps[-1] >= 4.0  # grew to the cap, stays there
    assert len(term.pending_reversals()) == 1  # never dropped
    host.unreachable = False  # the line is back
    assert step.next_due_s is not None
    clock.advance(step.next_due_s - clock.monotonic())
    step = term.reverse_step()
    assert (step.reversed, step.pending, step.next_due_s) == (1, 0, None)
    assert host.ledger_minor == 0 and term.entries()[0].state is TxnState.REVERSED


def test_a_cashiers_flush_waits_at_most_the_total_bound(
    tmp_path: Path, host: FakeHost, link: TimedLink, clock: FakeClock
) -> None:
    cfg = config(
        retry_backoff_s=2.0, retry_backoff_cap_s=8.0, retry_wait_total_s=5.0, reversal_retries_max=20
    )
    with Terminal(cfg, tmp_path / "pos", clock=clock, link=link, rng=random.Random(2)) as t:
        host.script.extend([Act.DROP_RESPONSE, *[Act.UNREACHABLE] * 20])
        start = clock.monotonic()
        assert t.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSAL_PENDING
        tries = link.times("0400")
        assert 2 <= len(tries) < 20 and tries[-1] - start <= 5.0
