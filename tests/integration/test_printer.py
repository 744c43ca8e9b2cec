"""Printing slips over real TCP to the ESC/POS printer emulator, and into a file."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from escpos.printer import Network

from tillroll.pan import mask_pan
from tillroll.sim.printer_emulator import EscPosPaper, PrinterEmulator, PrinterState, decode_documents
from tillroll.terminal.printer import (
    FilePrinter,
    NetworkPrinter,
    PrintError,
    PrinterStatus,
    job_bytes,
    open_printer,
)
from tillroll.terminal.receipt import Copy, Slip, TransType, slip_text

FULL_PAN = "6222021234567890123"
URL = "https://r.example.cn/e/10000001-000001-000123"
CUT = b"\x1dV\x00"


def make_slip(**changes: object) -> Slip:
    fields: dict[str, object] = {
        "merchant_name": "一号便利店（南京西路店）",
        "mid": "898310048990001",
        "tid": "10000001",
        "operator": "001",
        "pan_masked": mask_pan(FULL_PAN),
        "entry_mode": "C",
        "issuer": "工商银行",
        "acquirer": "银联商务",
        "expiry_yymm": "2812",
        "trans_type": TransType.SALE,
        "batch": "000001",
        "trace": "000123",
        "auth_code": "A1B2C3",
        "rrn": "123456789012",
        "when": datetime(2026, 11, 29, 9, 30, 15),
        "amount_minor": 1250,
    }
    fields.update(changes)
    return Slip(**fields)  # type: ignore[arg-type]


BOTH = [(make_slip(), Copy.MERCHANT), (make_slip(), Copy.CARDHOLDER)]


@pytest.fixture
def emu() -> Iterator[PrinterEmulator]:
    with PrinterEmulator() as e:
        yield e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raw_status(emu: PrinterEmulator, queries: bytes, n_replies: int) -> bytes:
    with socket.create_connection(("127.0.0.1", emu.port), timeout=2) as s:
        s.sendall(queries)
        got = b""
        while len(got) < n_replies:
            chunk = s.recv(16)
            assert chunk, "emulator closed the connection"
            got += chunk
        return got


def assert_no_full_pan(data: bytes) -> None:
    assert FULL_PAN.encode() not in data
    assert FULL_PAN not in data.decode("gb18030", errors="replace").replace(" ", "")


@pytest.mark.parametrize("width", [32, 48])
def test_prints_both_copies_with_masked_card_number(width: int) -> None:
    with PrinterEmulator(width_cols=width) as emu:
        printer = open_printer(emu.url, timeout_s=2, width_cols=width)
        printer.print_slips(BOTH)
        docs = emu.documents()
        assert docs == [
            slip_text(make_slip(), Copy.MERCHANT, width_cols=width),
            slip_text(make_slip(), Copy.CARDHOLDER, width_cols=width),
        ]
        assert "商户存根 MERCHANT COPY" in docs[0] and "持卡人存根 CARDHOLDER COPY" in docs[1]
        for doc in docs:
            assert "622202*********0123 C" in doc
            assert "RMB 12.50" in doc
        data = emu.received()
        assert_no_full_pan(data)
        assert b"\x1c\x26" in data  # FS &: Chinese mode before any text
        assert "签购单".encode("gb18030") in data
        assert data.count(CUT) == 2  # a cut after each copy


def test_void_reprint_and_e_receipt_qr(emu: PrinterEmulator) -> None:
    slip = make_slip(trans_type=TransType.VOID, reference="原凭证号 ORIG VOUCHER 000122", e_receipt_url=URL)
    open_printer(emu.url, timeout_s=2).print_slips([(slip, Copy.CARDHOLDER)], reprint=True)
    [doc] = emu.documents()
    assert doc == slip_text(slip, Copy.CARDHOLDER, reprint=True)
    assert "重打印 REPRINT" in doc and "消费撤销 VOID" in doc and "RMB -12.50" in doc
    assert doc.splitlines()[-1].strip() == f"[QR] {URL}"
    assert (
        b"\x1d(k" + len(URL.encode() + b"1P0").to_bytes(2, "little") + b"1P0" + URL.encode() in emu.received()
    )


@pytest.mark.parametrize(
    ("state", "expected", "replies"),
    [
        (PrinterState.READY, PrinterStatus.READY, b"\x12\x12\x12\x12"),
        (PrinterState.PAPER_OUT, PrinterStatus.PAPER_OUT, b"\x1a\x32\x12\x72"),
        (PrinterState.JAMMED, PrinterStatus.JAMMED, b"\x1a\x52\x1a\x12"),
    ],
)
def test_status_is_read_with_dle_eot(
    emu: PrinterEmulator, state: PrinterState, expected: PrinterStatus, replies: bytes
) -> None:
    emu.state = state
    assert raw_status(emu, b"\x10\x04\x01\x10\x04\x02\x10\x04\x03\x10\x04\x04", 4) == replies
    emu.clear()
    assert open_printer(emu.url, timeout_s=2).status() is expected
    assert emu.received() == b"\x10\x04\x01\x10\x04\x02\x10\x04\x04"
    # python-escpos's own readings agree with the emulator
    dev = Network("127.0.0.1", emu.port, timeout=2)
    try:
        assert dev.is_online() is (state is PrinterState.READY)
        assert dev.paper_status() == (0 if state is PrinterState.PAPER_OUT else 2)
    finally:
        dev.close()


@pytest.mark.parametrize(
    ("state", "status"),
    [(PrinterState.JAMMED, PrinterStatus.JAMMED), (PrinterState.PAPER_OUT, PrinterStatus.PAPER_OUT)],
)
def test_not_ready_printer_raises_and_prints_nothing(
    emu: PrinterEmulator, state: PrinterState, status: PrinterStatus
) -> None:
    emu.state = state
    with pytest.raises(PrintError) as err:
        open_printer(emu.url, timeout_s=2).print_slips(BOTH)
    assert err.value.status is status and not err.value.job_sent
    assert "reprint" in str(err.value) and "重打印" in str(err.value)
    assert emu.documents() == []
    assert CUT not in emu.received()  # nothing but status queries was sent


def test_jammed_emulator_does_not_print_a_stream_sent_anyway(emu: PrinterEmulator) -> None:
    job = job_bytes(BOTH)
    emu.state = PrinterState.JAMMED
    with socket.create_connection(("127.0.0.1", emu.port), timeout=2) as s:
        s.sendall(job + b"\x10\x04\x01")
        assert s.recv(1) == b"\x1a"  # answered after the whole job was taken
        assert emu.documents() == []
        assert emu.discarded_bytes == len(job)
        emu.state = PrinterState.READY
        s.sendall(job + b"\x10\x04\x01")
        assert s.recv(1) == b"\x12"
    assert emu.documents() == [slip_text(make_slip(), Copy.MERCHANT), slip_text(make_slip(), Copy.CARDHOLDER)]


def test_jam_in_the_middle_of_the_job_raises(emu: PrinterEmulator) -> None:
    emu.jam_after_documents(1)
    with pytest.raises(PrintError, match="打印中断") as err:
        open_printer(emu.url, timeout_s=2).print_slips(BOTH)
    assert err.value.status is PrinterStatus.JAMMED and err.value.job_sent
    assert emu.state is PrinterState.JAMMED
    assert emu.documents() == [slip_text(make_slip(), Copy.MERCHANT)]  # the cardholder copy was lost


def test_offline_when_nothing_listens() -> None:
    printer = open_printer(f"tcp://127.0.0.1:{free_port()}", timeout_s=1)
    assert printer.status() is PrinterStatus.OFFLINE
    with pytest.raises(PrintError, match="offline") as err:
        printer.print_slips(BOTH)
    assert err.value.status is PrinterStatus.OFFLINE and not err.value.job_sent


def test_offline_when_the_printer_does_not_answer_within_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel accepts the connection; nobody ever answers
        printer = NetworkPrinter("127.0.0.1", silent.getsockname()[1], timeout_s=0.3)
        started = time.monotonic()
        assert printer.status() is PrinterStatus.OFFLINE
        assert time.monotonic() - started < 1.0
        with pytest.raises(PrintError) as err:
            printer.print_slips(BOTH)
        assert err.value.status is PrinterStatus.OFFLINE


def test_file_printer_appends_the_byte_stream(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    printer = open_printer(f"file:{path}")
    assert isinstance(printer, FilePrinter)
    assert printer.status() is PrinterStatus.READY
    printer.print_slips(BOTH)
    first = path.read_bytes()
    assert first.startswith(b"\x1b@\x1c\x26") and first.count(CUT) == 2
    open_printer(f"file://{path}").print_slips([(make_slip(), Copy.CARDHOLDER)], reprint=True)
    data = path.read_bytes()
    assert data.startswith(first) and data.count(CUT) == 3
    assert_no_full_pan(data)
    assert decode_documents(data) == [
        slip_text(make_slip(), Copy.MERCHANT),
        slip_text(make_slip(), Copy.CARDHOLDER),
        slip_text(make_slip(), Copy.CARDHOLDER, reprint=True),
    ]


def test_file_printer_that_cannot_write_raises(tmp_path: Path) -> None:
    with pytest.raises(PrintError) as err:
        open_printer(f"file:{tmp_path / 'missing' / 'capture.bin'}").print_slips(BOTH)
    assert err.value.status is PrinterStatus.OFFLINE


def test_stream_split_anywhere_parses_the_same() -> None:
    job = job_bytes([(make_slip(e_receipt_url=URL), Copy.MERCHANT)])
    paper = EscPosPaper()
    stream = job + b"\x10\x04\x04"
    replies = b"".join(paper.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert replies == b"\x12"
    assert list(paper.documents) == [slip_text(make_slip(e_receipt_url=URL), Copy.MERCHANT)]


def test_emulator_bounds_connections_and_stops_promptly() -> None:
    emu = PrinterEmulator(max_connections=2, idle_timeout_s=0.3)
    emu.start()
    with contextlib.ExitStack() as sockets:
        try:
            held = [
                sockets.enter_context(socket.create_connection(("127.0.0.1", emu.port), timeout=2))
                for _ in range(2)
            ]
            for s in held:  # both are served
                s.sendall(b"\x10\x04\x01")
                assert s.recv(1) == b"\x12"
            assert open_printer(emu.url, timeout_s=1).status() is PrinterStatus.OFFLINE  # third is refused
            assert emu.rejected_connections == 1
            for s in held:  # silent for idle_timeout_s: closed by the emulator
                assert s.recv(1) == b""
            assert open_printer(emu.url, timeout_s=1).status() is PrinterStatus.READY
            lingering = sockets.enter_context(socket.create_connection(("127.0.0.1", emu.port), timeout=2))
            lingering.sendall(b"\x10\x04\x01")
            assert lingering.recv(1) == b"\x12"
        finally:
            started = time.monotonic()
            emu.stop()
            assert time.monotonic() - started < 1.0
        assert lingering.recv(1) == b""  # stop() closed it
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", emu.port), timeout=0.5).close()


def test_printer_urls() -> None:
    p = open_printer("tcp://192.0.2.10:9100", timeout_s=1.5, width_cols=48)
    assert isinstance(p, NetworkPrinter)
    assert (p.host, p.port, p.timeout_s, p.width_cols) == ("192.0.2.10", 9100, 1.5, 48)
    default_port = open_printer("tcp://printer.local")
    assert isinstance(default_port, NetworkPrinter) and default_port.port == 9100
    for bad in ("usb://1", "tcp://", "file:", "printer"):
        with pytest.raises(ValueError):
            open_printer(bad)
