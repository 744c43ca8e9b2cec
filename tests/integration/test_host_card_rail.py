"""The acquirer host over real TCP, at the wire level (PROFILE §1, §3-§6), on both databases."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from hostwire import MID, PAN, TID, WireClient, host_store

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import card_balance, card_messages
from tillroll.host.config import HostConfig
from tillroll.host.store import HostStore
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, pack


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    with host_store(db_url) as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(store: HostStore, clock: FakeClock) -> Iterator[HostServer]:
    with HostServer(store, clock=clock, key_lifetime_s=3600) as server:
        yield server


@pytest.fixture
def client(host: HostServer) -> Iterator[WireClient]:
    c = WireClient(host.address)
    yield c
    c.close()


def test_sign_in_returns_working_keys_that_verify(client: WireClient) -> None:
    ans = client.sign_in("004")
    assert ans.code == "00"
    assert ans.header[2] & 0x0F == 0
    assert len(bytes.fromhex(ans.message["62"])) == 60
    assert client.keys is not None and client.keys.tdk is not None
    assert ans.message["60"] == "00000001004"


def test_sale_approved_debits_the_card_and_messages_the_cardholder(
    client: WireClient, store: HostStore
) -> None:
    client.sign_in()
    ans = client.send(client.sale_message(1250))
    assert ans.code == "00" and ans.mac_ok
    assert len(ans.message["38"]) == 6 and len(ans.message["37"]) == 12
    assert ans.message["63"].startswith("CUP")
    assert card_balance(store, PAN) == 100_000 - 1250
    (sms,) = card_messages(store, PAN)
    assert "尾号0123" in sms and "消费12.50元" in sms


def test_decline_codes_from_the_issuer(client: WireClient, store: HostStore) -> None:
    client.sign_in()
    assert client.send(client.sale_message(200_000)).code == "51"
    assert client.send(client.sale_message(100, pan="6222020000000000000")).code == "14"
    assert client.send(client.sale_message(100, expiry="2001")).code == "54"
    assert client.send(client.sale_message(100, pin="999999")).code == "55"
    assert client.send(client.sale_message(100, pin="999999")).code == "55"
    assert client.send(client.sale_message(100, pin="999999")).code == "75"
    assert client.send(client.sale_message(100)).code == "75"  # locked, even with the right PIN
    assert card_balance(store, PAN) == 100_000


def test_identical_retry_replays_the_stored_answer(client: WireClient, store: HostStore) -> None:
    client.sign_in()
    sale = client.sale_message(500, pin=None)
    first = client.send(sale)
    again = client.send(sale)
    assert first.code == again.code == "00"
    assert (first.message["37"], first.message["38"]) == (again.message["37"], again.message["38"])
    assert card_balance(store, PAN) == 100_000 - 500
    changed = sale.with_fields(f4=f"{600:012d}")
    assert client.send(changed).code == "94"


def test_balance_inquiry(client: WireClient) -> None:
    client.sign_in()
    msg = client.sale_message(0)
    msg = msg.without("4").with_fields(f3="310000", f60=f"01{client.batch}000")
    ans = client.send(msg)
    assert ans.code == "00" and ans.mac_ok
    assert ans.message["54"] == "1002156C000000100000"


def test_reversal_undoes_an_approval_and_repeats_change_nothing(client: WireClient, store: HostStore) -> None:
    client.sign_in()
    sale = client.sale_message(3000)
    assert client.send(sale).code == "00"
    rev = client.reversal_of(sale, "98")
    assert client.send(rev).code == "00"
    assert client.send(rev).code == "00"
    assert client.send(client.reversal_of(sale, "06")).code == "00"
    assert card_balance(store, PAN) == 100_000
    msgs = card_messages(store, PAN)
    assert len(msgs) == 2 and "冲正退回30.00元" in msgs[1]


def test_reversal_that_overtakes_its_original_leaves_a_tombstone(
    client: WireClient, store: HostStore
) -> None:
    client.sign_in()
    sale = client.sale_message(700)
    assert client.send(client.reversal_of(sale)).code == "00"
    assert client.send(sale).code == "94"
    assert card_balance(store, PAN) == 100_000


def test_void_in_the_same_batch(client: WireClient, store: HostStore) -> None:
    client.sign_in()
    sale = client.sale_message(1999)
    sale_ans = client.send(sale)
    void = client.void_message(sale, sale_ans.message)
    ans = client.send(void)
    assert ans.code == "00" and ans.mac_ok
    assert card_balance(store, PAN) == 100_000
    assert client.send(client.void_message(sale, sale_ans.message)).code == "12"
    # Reversing the void puts the sale back.
    assert client.send(client.reversal_of(void)).code == "00"
    assert card_balance(store, PAN) == 100_000 - 1999
    assert "撤销被冲正，重新扣款19.99元" in card_messages(store, PAN)[-1]


def test_void_with_wrong_amount_or_unknown_original(client: WireClient) -> None:
    client.sign_in()
    sale = client.sale_message(1000)
    sale_ans = client.send(sale)
    wrong = client.void_message(sale, sale_ans.message).with_fields(f4=f"{999:012d}")
    assert client.send(wrong).code == "64"
    unknown = client.void_message(sale, sale_ans.message).with_fields(f37="999999999999")
    assert client.send(unknown).code == "25"


def test_bad_mac_is_a0_and_asks_for_sign_in(client: WireClient, store: HostStore) -> None:
    client.sign_in()
    raw = bytearray(pack(client.sale_message(100).with_fields(f64="00000000")))
    ans = client.exchange_raw(bytes(raw))
    assert ans.code == "A0"
    assert ans.header[2] & 0x0F == 3
    assert not ans.mac_ok and "64" not in ans.message
    assert card_balance(store, PAN) == 100_000


def test_no_session_wrong_batch_and_expiry_answer_77(client: WireClient, clock: FakeClock) -> None:
    client.keys = None
    from tillroll.crypto.keys import WorkingKeys

    client.keys = WorkingKeys.generate()
    assert client.send(client.sale_message(100, pin=None)).code == "77"
    client.sign_in()
    other_batch = client.sale_message(100, pin=None).with_fields(f60="22000009000")
    ans = client.send(other_batch)
    assert ans.code == "77" and ans.header[2] & 0x0F == 3
    clock.advance(3601)
    assert client.send(client.sale_message(100, pin=None)).code == "77"
    assert client.sign_in().code == "00"
    assert client.send(client.sale_message(100, pin=None)).code == "00"


def test_unknown_terminal_and_wrong_merchant(host: HostServer) -> None:
    stranger = WireClient(host.address, tid="99999999")
    assert stranger.sign_in().code == "97"
    stranger.close()
    wrong_mid = WireClient(host.address, mid="000000000000000")
    assert wrong_mid.sign_in().code == "03"
    wrong_mid.close()


def test_sign_out_ends_the_session(client: WireClient) -> None:
    client.sign_in()
    out = Message("0820", {"11": client.next_stan(), "41": TID, "42": MID, "60": f"00{client.batch}002"})
    assert client.send(out, mac=False).code == "00"
    assert client.send(client.sale_message(100, pin=None)).code == "77"


def test_echo(client: WireClient) -> None:
    echo = Message("0820", {"11": client.next_stan(), "41": TID, "42": MID, "60": "00000001301"})
    assert client.send(echo, mac=False).code == "00"


def test_garbage_and_bad_frames_do_not_disturb_other_connections(
    host: HostServer, client: WireClient
) -> None:
    client.sign_in()
    for junk in (b"\x00\x00", b"\x00\x05hello", b"\xff\xff" + b"x" * 100, b"GET / HTTP/1.1\r\n\r\n"):
        s = socket.create_connection(host.address, timeout=5)
        s.sendall(junk)
        s.settimeout(5)
        assert s.recv(100) == b""  # closed by the host
        s.close()
    # A frame that is a frame but not a message, with a readable MTI and TID: answered 30.
    body = pack(Message("0200", {"11": "000001", "41": TID, "42": MID}))[:-3]
    s = socket.create_connection(host.address, timeout=5)
    s.sendall(struct.pack(">H", len(body) + 11) + framing.TERMINAL_TPDU + framing.TERMINAL_HEADER + body)
    frame = framing.parse_payload(framing.recv_payload(s))
    s.close()
    from tillroll.iso8583.messages import unpack

    assert unpack(frame.message)["39"] == "30"
    assert client.send(client.sale_message(100, pin=None)).code == "00"


def test_connection_and_idle_bounds(store: HostStore) -> None:
    with HostServer(store, config=HostConfig(connections_max=2, idle_timeout_s=0.5)) as host:
        # A round trip on each: both are served, so both count against the bound.
        first, second = WireClient(host.address), WireClient(host.address)
        assert first.sign_in().code == "00" and second.sign_in().code == "00"
        assert first.sock is not None and second.sock is not None
        third = socket.create_connection(host.address, timeout=5)
        assert third.recv(10) == b""  # over the bound: closed at once
        third.close()
        assert first.sock.recv(10) == b""  # idle past 0.5 s: closed
        second.close()
        first.close()
        # The bound freed up: a new terminal is served.
        c = WireClient(host.address)
        assert c.sign_in().code == "00"
        c.close()
