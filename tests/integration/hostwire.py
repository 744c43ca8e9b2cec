"""A minimal wire-level client for host tests: builds, signs and frames raw requests.

Deliberately independent of the terminal engine, so that host tests pin the wire contract.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tillroll.crypto import encrypt_pin_block, unwrap_working_keys
from tillroll.crypto.keys import WorkingKeys
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack

MID = "123456789012345"
TID = "12345678"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
MERCHANT_NAME = "一号便利店"
CARD_BALANCE_MINOR = 100_000


@contextmanager
def host_store(db_url: str, *, mid: str = MID, tid: str = TID) -> Iterator[HostStore]:
    """The host's store on `db_url` with one merchant, its terminal (key TMK) and the test card
    (PAN, CARD_BALANCE_MINOR): the `store` fixture of most host tests."""
    store = open_store(db_url)
    try:
        add_merchant(store, mid, MERCHANT_NAME)
        add_terminal(store, tid, mid, TMK)
        add_card(store, PAN, EXPIRY, PIN, CARD_BALANCE_MINOR)
        yield store
    finally:
        store.engine.dispose()


@dataclass
class Answer:
    message: Message
    raw: bytes
    header: bytes
    mac_ok: bool

    @property
    def code(self) -> str:
        return self.message["39"]


@dataclass
class WireClient:
    address: tuple[str, int]
    tid: str = TID
    mid: str = MID
    tmk: bytes = TMK
    stan: int = 0
    batch: str = "000001"
    keys: WorkingKeys | None = None
    sock: socket.socket | None = field(default=None, repr=False)

    def connect(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=5)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def next_stan(self) -> str:
        self.stan += 1
        return f"{self.stan:06d}"

    def exchange_raw(self, body: bytes) -> Answer:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode())
        frame = framing.parse_payload(framing.recv_payload(self.sock))
        msg = unpack(frame.message)
        ok = self.keys is not None and mac_matches(frame.message, self.keys.mak)
        return Answer(msg, frame.message, frame.header, ok)

    def send(self, msg: Message, *, mac: bool = True) -> Answer:
        if mac:
            assert self.keys is not None
            return self.exchange_raw(sign(msg, self.keys.mak))
        return self.exchange_raw(pack(msg))

    def sign_in(self, mode: str = "003") -> Answer:
        req = Message(
            "0800",
            {
                "11": self.next_stan(),
                "41": self.tid,
                "42": self.mid,
                "60": f"00{self.batch}{mode}",
                "63": "001",
            },
        )
        ans = self.send(req, mac=False)
        if ans.code == "00":
            self.keys = unwrap_working_keys(self.tmk, bytes.fromhex(ans.message["62"]))
            self.batch = ans.message["60"][2:8]
        return ans

    def sale_message(
        self,
        amount_minor: int,
        *,
        pan: str = PAN,
        expiry: str = EXPIRY,
        pin: str | None = PIN,
        stan: str | None = None,
    ) -> Message:
        fields = {
            "2": pan,
            "3": "000000",
            "4": f"{amount_minor:012d}",
            "11": stan or self.next_stan(),
            "14": expiry,
            "22": "021" if pin else "022",
            "25": "00",
            "41": self.tid,
            "42": self.mid,
            "49": "156",
            "53": "2600000000000000",
            "60": f"22{self.batch}000",
        }
        if pin is not None:
            assert self.keys is not None
            fields["26"] = "12"
            fields["52"] = encrypt_pin_block(self.keys.pik, pin, pan).hex().upper()
        return Message("0200", fields)

    def reversal_of(self, original: Message, reason: str = "98") -> Message:
        fields = {k: v for k, v in original.fields.items() if k not in ("26", "35", "36", "52", "53", "64")}
        fields["39"] = reason
        return Message("0400", fields)

    def void_message(self, sale: Message, sale_answer: Message) -> Message:
        return Message(
            "0200",
            {
                "2": sale["2"],
                "3": "200000",
                "4": sale["4"],
                "11": self.next_stan(),
                "25": "00",
                "37": sale_answer["37"],
                "38": sale_answer["38"],
                "41": self.tid,
                "42": self.mid,
                "49": "156",
                "60": f"23{self.batch}000",
                "61": f"{sale['60'][2:8]}{sale['11']}{sale_answer['13']}",
            },
        )

    def refund_message(self, sale: Message, sale_answer: Message, amount_minor: int) -> Message:
        return Message(
            "0220",
            {
                "2": sale["2"],
                "3": "200000",
                "4": f"{amount_minor:012d}",
                "11": self.next_stan(),
                "25": "00",
                "37": sale_answer["37"],
                "41": self.tid,
                "42": self.mid,
                "49": "156",
                "60": f"25{self.batch}000",
                "61": f"{sale['60'][2:8]}{sale['11']}{sale_answer['13']}",
                "63": "000",
            },
        )

    def settle_message(
        self, debit_minor: int, debit_count: int, credit_minor: int, credit_count: int
    ) -> Message:
        totals = f"{debit_minor:012d}{debit_count:03d}{credit_minor:012d}{credit_count:03d}0"
        return Message(
            "0500",
            {
                "11": self.next_stan(),
                "41": self.tid,
                "42": self.mid,
                "48": totals + "0" * 31,
                "49": "156",
                "60": f"00{self.batch}201",
                "63": "001",
            },
        )

    def upload_message(self, items: list[tuple[str, str, int]]) -> Message:
        body = "".join(f"00{stan}{pan:0>20}{amount:012d}" for stan, pan, amount in items)
        return Message(
            "0320",
            {"11": self.next_stan(), "41": self.tid, "42": self.mid, "48": f"{len(items):02d}{body}",
             "60": f"00{self.batch}201"},
        )  # fmt: skip

    def upload_end_message(self, total: int, balanced: bool = False) -> Message:
        return Message(
            "0320",
            {"11": self.next_stan(), "41": self.tid, "42": self.mid, "48": f"{total:04d}",
             "60": f"00{self.batch}{'207' if balanced else '202'}"},
        )  # fmt: skip


def empty_database(url: str) -> str:
    """Bring a test database to the state of a just-created one (for stateful tests that need a
    fresh one per example); `open_store` then migrates it as it would a new one.

    Rebuilding the schema per example was most of an example's set-up (PostgreSQL: drop the
    schema and run every migration, ~0.7 s; SQLite: a new file migrated, ~0.4 s of fsyncs), so a
    database this process already migrated to the code's head is emptied instead, into the state
    the migrations leave (they create tables and insert no rows, which
    tests/integration/test_store_schema.py pins): PostgreSQL deletes every row but
    ``alembic_version``'s and restarts every sequence; SQLite gets a copy of a file this process
    migrated once. Anything else (no schema yet, another revision) is dropped and rebuilt."""
    if url.startswith("postgresql"):
        _empty_postgres(url)
    else:
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            if Path(path + suffix).exists():
                os.unlink(path + suffix)
        shutil.copyfile(_sqlite_template(), path)
        os.chmod(path, 0o600)  # as make_engine creates a SQLite file
    return url


@functools.cache
def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from tillroll.store.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@functools.cache
def _sqlite_template() -> Path:
    """A SQLite file migrated to head, made once per process (its -wal folded in on close)."""
    from tillroll.store import make_engine, migrate

    path = Path(tempfile.mkdtemp(prefix="tillroll-template-")) / "host.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    assert not Path(f"{path}-wal").exists()
    return path


@functools.cache
def _postgres_layout(url: str, head: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tables (children before parents) and sequences of `url`'s public schema at `head`."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine, schema="public")
        tables = tuple(t.name for t in reversed(meta.sorted_tables) if t.name != "alembic_version")
        with engine.connect() as conn:
            sequences = tuple(
                str(name)
                for (name,) in conn.exec_driver_sql(
                    "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'"
                )
            )
    finally:
        engine.dispose()
    return tables, sequences


def _empty_postgres(url: str) -> None:
    import sqlalchemy as sa

    head = _head_revision()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            at_head = conn.exec_driver_sql(
                "SELECT to_regclass('public.alembic_version') IS NOT NULL"
            ).scalar_one() and conn.exec_driver_sql(
                "SELECT array_agg(version_num) FROM public.alembic_version"
            ).scalar_one() == [head]
            if not at_head:
                conn.exec_driver_sql("DROP SCHEMA public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
                return
        tables, sequences = _postgres_layout(url, head)
        with engine.begin() as conn:
            for table in tables:
                conn.exec_driver_sql(f'DELETE FROM public."{table}"')
            for sequence in sequences:
                conn.exec_driver_sql(f"ALTER SEQUENCE public.{sequence} RESTART")
    finally:
        engine.dispose()
