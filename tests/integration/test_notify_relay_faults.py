"""The relay under random faults (hypothesis): crashes at every step and temporary or permanent
refusals by a real SMTP server, in any order. After recovery every message is delivered or dead,
a delivered one reached the mailbox (with its own Message-ID), no message is marked twice, and
attempts stay within the schedule's bound plus the crashes."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from notifywire import FACT_AT, back_office, cancelled_fact
from sqlalchemy import select

from tillroll.clock import FakeClock
from tillroll.notify.outbox import Channel, MessageKind, MessageState
from tillroll.notify.relay import Relay, RelayConfig, RelayCrash, Schedule
from tillroll.notify.routing import fan_out
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import outbox

SCHEDULE = Schedule((1.0, 2.0, 4.0), jitter_ratio=0.5)
LEASE_S = 30.0
ROUNDS_MAX = 60


class CrashAt:
    """Crash at ``point`` after letting it pass ``after`` times."""

    def __init__(self, point: str, after: int) -> None:
        self.point, self.after, self.seen = point, after, 0

    def __call__(self, point: str, message_id: str | None) -> None:
        if point == self.point:
            if self.seen >= self.after:
                raise RelayCrash(point)
            self.seen += 1


fault = st.one_of(
    st.tuples(st.just("crash"), st.sampled_from(["claimed", "sent", "marked"]), st.integers(0, 3)),
    st.tuples(st.just("refuse"), st.sampled_from([451, 550]), st.integers(1, 3)),
    st.tuples(st.just("none"), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.integers(1, 6), faults=st.lists(fault, max_size=8), batch=st.integers(1, 4))
def test_every_message_ends_delivered_or_dead(
    messages: int, faults: list[tuple[str, object, int]], batch: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp, SmtpSink() as sink:
        engine = back_office(f"sqlite:///{Path(tmp) / 'host.db'}")
        with engine.begin() as conn:
            for n in range(messages):
                fact = cancelled_fact(n, contact=f"c{n}@example.com")
                fan_out(conn, MessageKind.PAYMENT_CANCELLED, fact, FACT_AT)
        clock = FakeClock(FACT_AT)
        sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port, timeout_s=5.0))
        config = RelayConfig(lease_s=LEASE_S, batch_max=batch, schedules={Channel.EMAIL: SCHEDULE})
        crashes = 0
        plan = list(faults)
        for _ in range(ROUNDS_MAX):
            kind, what, n = plan.pop(0) if plan else ("none", 0, 0)
            crash = CrashAt(str(what), n) if kind == "crash" else None
            if kind == "refuse":
                sink.fail_next(n, code=int(str(what)))
            relay = Relay(engine, outbox, {Channel.EMAIL: sender}, clock=clock, config=config, crash=crash)
            try:
                relay.run_once()
            except RelayCrash:
                crashes += 1
            sink.fail_next(0)
            clock.advance(LEASE_S + 10)  # past any lease and any retry delay
            with engine.connect() as conn:
                pending = conn.execute(
                    select(outbox.messages.c.id).where(outbox.messages.c.state == MessageState.PENDING.value)
                ).all()
            if not pending and not plan:
                break
        sender.close()
        m, a = outbox.messages, outbox.attempts
        with engine.connect() as conn:
            rows = conn.execute(select(m.c.id, m.c.message_id, m.c.state, m.c.attempts)).all()
            outcomes = conn.execute(select(a.c.message_pk, a.c.outcome)).all()
        engine.dispose()
        mailbox = Counter(mail.message_id for mail in sink.messages)
        per_message = {r.id: [o.outcome for o in outcomes if o.message_pk == r.id] for r in rows}
        for r in rows:
            assert r.state in (MessageState.DELIVERED, MessageState.DEAD), r
            marks = per_message[r.id]
            assert marks.count("delivered") + marks.count("dead") == 1  # marked once, at the end
            assert marks[-1] == r.state
            assert len(marks) <= SCHEDULE.attempts_max
            assert r.attempts <= SCHEDULE.attempts_max + crashes
            if r.state == MessageState.DELIVERED:
                assert mailbox[f"<{r.message_id}@tillroll.localhost>"] >= 1
        assert set(mailbox) <= {f"<{r.message_id}@tillroll.localhost>" for r in rows}
