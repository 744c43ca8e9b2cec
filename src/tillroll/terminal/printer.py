"""Receipt printer adapters: ESC/POS over TCP or into a file (python-escpos), and a memory fake.

How a job goes out (:meth:`NetworkPrinter.print_slips`):

1. every slip is laid out (pure, :func:`render_slip`, so a bad slip fails before any IO) and
   the whole ESC/POS stream is built (python-escpos ``Dummy``, :func:`job_bytes`):
   ``ESC @`` (initialise), ``FS &`` (Chinese character mode), then each copy: per line ``set()``
   (alignment, bold, double height) and the text as raw GB18030 bytes, a native QR code
   (``GS ( k``) for the e-receipt address, and a paper cut (``cut()``) after each copy;
2. one TCP connection (``escpos.printer.Network``); the printer's real-time status (DLE EOT 1, 2,
   4) is read on it, and anything but READY raises :class:`PrintError` without sending the job;
3. the job is sent in one write;
4. the status is read again: it is answered only after the printer has taken every byte before
   it, so a connection that broke or a printer that jammed mid-job raises :class:`PrintError`
   (the caller then reprints, marked 重打印 REPRINT, or issues the e-receipt).

Why raw GB18030 rather than ``text()``: python-escpos 3.1 sends a line as GB18030 only when it
contains a character of U+4E00..U+9FA5; a line of full-width punctuation, ``·`` or a rarer
character would go through its code-page guessing instead (``ESC t`` switches or ``?``). Printers
in China take GB18030 after ``FS &``, and every Unicode character has a GB18030 encoding.

Why not ``is_online()``/``paper_status()`` as they stand: ``paper_status()`` reports "paper
adequate" when the printer does not answer, and neither checks the status byte's fixed bits. The
adapter sends the same DLE EOT queries through python-escpos's ``query_status()`` and decodes the
byte itself, bounded by one deadline of ``timeout_s`` per status read.

``escpos.printer.Network.open`` leaks its socket when the connection is refused (a
ResourceWarning); :class:`_NetworkDevice` opens with ``socket.create_connection`` instead.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from escpos.constants import QR_ECLEVEL_M, RT_STATUS_ONLINE, RT_STATUS_PAPER
from escpos.exceptions import DeviceNotFoundError
from escpos.printer import Dummy, File, Network

from tillroll.terminal.receipt import Copy, Slip, SlipLine, render_slip, slip_text

RT_STATUS_OFFLINE_CAUSE = b"\x10\x04\x02"  # DLE EOT 2; python-escpos names only n=1 and n=4
FS_CHINESE_MODE = b"\x1c\x26"  # FS &: double-byte (GB18030) characters

# Epson ESC/POS real-time status bytes (DLE EOT n): bits 1 and 4 always set, bits 0 and 7 clear.
STATUS_FIXED_MASK = 0x93
STATUS_FIXED_BITS = 0x12
STATUS_OFFLINE = 0x08  # n=1: printer offline
STATUS_COVER_OPEN = 0x04  # n=2
STATUS_STOPPED_PAPER_END = 0x20  # n=2: printing stopped by paper end
STATUS_ERROR = 0x40  # n=2: an error occurred (jam, cutter, head)
STATUS_PAPER_END = 0x60  # n=4: roll paper end sensor


class PrinterStatus(enum.Enum):
    READY = "ready"
    PAPER_OUT = "paper_out"
    JAMMED = "jammed"
    OFFLINE = "offline"

    @property
    def message(self) -> str:
        """What happened and what to do, in Chinese and English."""
        return _STATUS_MESSAGES[self]


_STATUS_MESSAGES = {
    PrinterStatus.READY: "打印机就绪 / printer ready",
    PrinterStatus.PAPER_OUT: (
        "打印机缺纸：请装入纸卷后重打印 / printer out of paper: load a paper roll, then reprint"
    ),
    PrinterStatus.JAMMED: (
        "打印机卡纸或故障：请打开纸仓盖清除卡纸后重打印 / "
        "printer jammed or in error: open the cover, clear the paper, then reprint"
    ),
    PrinterStatus.OFFLINE: (
        "打印机未连接或无响应：请检查电源和网线后重打印 / "
        "printer offline or not answering: check its power and cable, then reprint"
    ),
}


class PrintError(Exception):
    """A slip was not (or not certainly) printed. ``status`` says why.

    ``job_sent`` is False when no byte of the slips left (nothing can have been printed) and True
    when the job was sent, at least in part (some copies may be on paper: reprint as REPRINT).
    """

    def __init__(self, status: PrinterStatus, detail: str = "", *, job_sent: bool = False) -> None:
        self.status = status
        self.detail = detail
        self.job_sent = job_sent
        super().__init__(f"{status.message} ({detail})" if detail else status.message)


class Printer(Protocol):
    def status(self) -> PrinterStatus:
        """The printer's state, read with a real-time status query bounded by the adapter's timeout."""
        ...

    def print_slips(
        self,
        slips: Sequence[tuple[Slip, Copy]],
        *,
        reprint: bool = False,
        signatures: Sequence[bytes | None] = (),
    ) -> None:
        """Print each (slip, copy), a cut after each; ``signatures[i]`` is the PNG of slip i's
        electronic signature, printed on a merchant copy in the signing space.

        Raises :class:`PrintError` if the printer is not READY or the stream fails.
        """
        ...


def decode_status(online: int, offline_cause: int, paper: int) -> PrinterStatus:
    """The printer's state from the DLE EOT 1, 2 and 4 answers (Epson's bit layout)."""
    for byte in (online, offline_cause, paper):
        if byte & STATUS_FIXED_MASK != STATUS_FIXED_BITS:
            return PrinterStatus.OFFLINE  # not an ESC/POS status byte: not a printer we understand
    if paper & STATUS_PAPER_END or offline_cause & STATUS_STOPPED_PAPER_END:
        return PrinterStatus.PAPER_OUT
    if offline_cause & (STATUS_ERROR | STATUS_COVER_OPEN):
        return PrinterStatus.JAMMED
    if online & STATUS_OFFLINE:
        return PrinterStatus.OFFLINE
    return PrinterStatus.READY


# ---------------------------------------------------------------------------------------------
# the ESC/POS stream (shared by the network and file printers)


def qr_module_size(width_cols: int) -> int:
    """QR dot size: fits a 58 mm (384 dot) or 80 mm (576 dot) roll for addresses up to ~500 bytes."""
    return 4 if width_cols < 48 else 6


def _emit_line(dev: Any, line: SlipLine, width_cols: int) -> None:
    dev.set(
        align=line.align.value,
        bold=line.bold,
        normal_textsize=not line.double_height,
        double_height=line.double_height,
    )
    if line.is_qr:
        dev.qr(line.text, ec=QR_ECLEVEL_M, size=qr_module_size(width_cols), native=True)
    else:
        dev._raw(line.text.encode("gb18030", errors="replace") + b"\n")


def render_job(slips: Sequence[tuple[Slip, Copy]], *, reprint: bool, width_cols: int) -> list[list[SlipLine]]:
    """Lay out every copy (pure): a bad slip fails here, before any byte is sent."""
    return [render_slip(slip, copy, reprint=reprint, width_cols=width_cols) for slip, copy in slips]


def emit_job(
    dev: Any,
    rendered: Sequence[Sequence[SlipLine]],
    *,
    width_cols: int,
    signatures: Sequence[Any | None] = (),
) -> None:
    """Write the ESC/POS stream of laid-out copies to a python-escpos printer, a cut after each.

    ``signatures[i]``, when given, is the 1-bit image (``signature_print.signature_raster``) of
    copy ``i``'s electronic signature: printed as a raster image (GS v 0) in the signing space."""
    dev.hw("INIT")
    dev._raw(FS_CHINESE_MODE)
    for i, lines in enumerate(rendered):
        image = signatures[i] if i < len(signatures) else None
        placed = False
        for line in lines:
            if line.signature_space and image is not None:
                if not placed:  # the image fills the whole signing space
                    dev.set(align="center")
                    dev.image(image, impl="bitImageRaster")
                    placed = True
                continue
            _emit_line(dev, line, width_cols)
        dev.set(align="left", bold=False, normal_textsize=True)
        dev.cut()


def job_bytes(
    slips: Sequence[tuple[Slip, Copy]],
    *,
    reprint: bool = False,
    width_cols: int = 32,
    signatures: Sequence[bytes | None] = (),
) -> bytes:
    """The whole ESC/POS stream of a job (pure): built before any connection is opened.

    ``signatures[i]``: the PNG of slip ``i``'s electronic signature (merchant copies only)."""
    rendered = render_job(slips, reprint=reprint, width_cols=width_cols)
    images: list[Any | None] = []
    for (_, copy), png in zip(slips, signatures, strict=False):
        images.append(_signature_image(png, width_cols) if png and copy is Copy.MERCHANT else None)
    dev = Dummy()
    emit_job(dev, rendered, width_cols=width_cols, signatures=images)
    out: bytes = dev.output
    return out


def _signature_image(png: bytes, width_cols: int) -> Any:
    # Imported when first needed: Pillow is only loaded by terminals that print signatures.
    from tillroll.terminal.signature_print import signature_raster

    return signature_raster(png, width_dots=dots_per_line(width_cols))


def dots_per_line(width_cols: int) -> int:
    """Printable dots of a line: 384 on 58 mm paper (32 columns), 576 on 80 mm (48 columns)."""
    return width_cols * 12


# ---------------------------------------------------------------------------------------------
# network printer


class _NetworkDevice(Network):  # type: ignore[misc]  # python-escpos is untyped
    """escpos Network with a leak-free open() and reads bounded by a deadline."""

    device: Any  # the property of Escpos, typed for mypy
    deadline: float = 0.0

    def open(self, raise_not_found: bool = True) -> None:
        if self._device:
            self.close()
        try:
            self.device = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            self.device = None
            raise DeviceNotFoundError(f"cannot connect to {self.host}:{self.port}: {e}") from e

    def _read(self) -> bytes:
        sock: socket.socket = self.device
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("printer status query timed out")
        sock.settimeout(remaining)
        try:
            return sock.recv(16)
        finally:
            sock.settimeout(self.timeout)


class NetworkPrinter:
    """An ESC/POS printer on TCP (port 9100 style), one connection per call."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 3.0, width_cols: int = 32) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.width_cols = width_cols

    def _open(self) -> _NetworkDevice:
        dev = _NetworkDevice(self.host, self.port, timeout=self.timeout_s)
        dev.open()
        return dev

    def _query(self, dev: _NetworkDevice) -> PrinterStatus:
        dev.deadline = time.monotonic() + self.timeout_s
        answers: list[int] = []
        for query in (RT_STATUS_ONLINE, RT_STATUS_OFFLINE_CAUSE, RT_STATUS_PAPER):
            reply: bytes = dev.query_status(query)
            if not reply:
                return PrinterStatus.OFFLINE  # the printer closed the connection
            answers.append(reply[-1])  # the latest byte answers this query
        return decode_status(*answers)

    def status(self) -> PrinterStatus:
        try:
            dev = self._open()
        except DeviceNotFoundError:
            return PrinterStatus.OFFLINE
        try:
            return self._query(dev)
        except OSError:
            return PrinterStatus.OFFLINE
        finally:
            dev.close()

    def print_slips(
        self,
        slips: Sequence[tuple[Slip, Copy]],
        *,
        reprint: bool = False,
        signatures: Sequence[bytes | None] = (),
    ) -> None:
        if not slips:
            return
        job = job_bytes(slips, reprint=reprint, width_cols=self.width_cols, signatures=signatures)
        try:
            dev = self._open()
        except DeviceNotFoundError as e:
            raise PrintError(PrinterStatus.OFFLINE, f"{e} / 未打印") from e
        sent = False
        try:
            before = self._query(dev)
            if before is not PrinterStatus.READY:
                raise PrintError(before, "nothing was printed / 未打印")
            sent = True
            dev._raw(job)
            after = self._query(dev)  # answered once the printer has taken the whole job
            if after is not PrinterStatus.READY:
                raise PrintError(after, "the printer stopped during the job / 打印中断", job_sent=True)
        except OSError as e:
            detail = f"connection failed / 连接中断: {e}"
            raise PrintError(PrinterStatus.OFFLINE, detail, job_sent=sent) from e
        finally:
            dev.close()

    def __repr__(self) -> str:
        return f"NetworkPrinter(tcp://{self.host}:{self.port})"


# ---------------------------------------------------------------------------------------------
# file printer


class _AppendFile(File):  # type: ignore[misc]  # python-escpos is untyped
    """escpos File that appends (File.open truncates)."""

    device: Any  # the property of Escpos, typed for mypy

    def open(self, raise_not_found: bool = True) -> None:
        if self._device:
            self.close()
        try:
            self.device = open(self.devfile, "ab")  # noqa: SIM115  # closed by close()
        except OSError as e:
            self.device = None
            raise DeviceNotFoundError(f"cannot open {self.devfile}: {e}") from e


class FilePrinter:
    """Appends the ESC/POS byte stream to a file (a device node or a capture). Always READY."""

    def __init__(self, path: Path, *, width_cols: int = 32) -> None:
        self.path = path
        self.width_cols = width_cols

    def status(self) -> PrinterStatus:
        return PrinterStatus.READY

    def print_slips(
        self,
        slips: Sequence[tuple[Slip, Copy]],
        *,
        reprint: bool = False,
        signatures: Sequence[bytes | None] = (),
    ) -> None:
        if not slips:
            return
        job = job_bytes(slips, reprint=reprint, width_cols=self.width_cols, signatures=signatures)
        dev = _AppendFile(str(self.path), auto_flush=False)
        try:
            dev.open()
        except DeviceNotFoundError as e:
            raise PrintError(PrinterStatus.OFFLINE, f"{e} / 未打印") from e
        try:
            dev._raw(job)
            dev.flush()
        except OSError as e:
            raise PrintError(PrinterStatus.OFFLINE, f"cannot write {self.path}: {e}", job_sent=True) from e
        finally:
            with contextlib.suppress(OSError):
                dev.close()

    def __repr__(self) -> str:
        return f"FilePrinter(file:{self.path})"


# ---------------------------------------------------------------------------------------------
# memory fake


@dataclass(frozen=True)
class PrintedCopy:
    slip: Slip
    copy: Copy
    reprint: bool
    signature: bytes | None = None  # the PNG printed in the signing space (merchant copy)


@dataclass
class MemoryPrinter:
    """A fake for unit tests: records what it printed; set ``current`` to any status to fail."""

    current: PrinterStatus = PrinterStatus.READY
    width_cols: int = 32
    printed: list[PrintedCopy] = field(default_factory=list)

    def set_status(self, status: PrinterStatus) -> None:
        self.current = status

    def status(self) -> PrinterStatus:
        return self.current

    def print_slips(
        self,
        slips: Sequence[tuple[Slip, Copy]],
        *,
        reprint: bool = False,
        signatures: Sequence[bytes | None] = (),
    ) -> None:
        job_bytes(slips, reprint=reprint, width_cols=self.width_cols, signatures=signatures)
        if self.current is not PrinterStatus.READY:
            raise PrintError(self.current, "nothing was printed / 未打印")
        sigs = list(signatures) + [None] * (len(slips) - len(signatures))
        self.printed.extend(
            PrintedCopy(slip, copy, reprint, sig if copy is Copy.MERCHANT else None)
            for (slip, copy), sig in zip(slips, sigs, strict=False)
        )

    def texts(self) -> list[str]:
        """The plain text of every printed copy, in order."""
        return [
            slip_text(p.slip, p.copy, reprint=p.reprint, width_cols=self.width_cols) for p in self.printed
        ]


def open_printer(url: str, *, timeout_s: float = 3.0, width_cols: int = 32) -> Printer:
    """``tcp://HOST:PORT`` (port 9100 if omitted) or ``file:PATH``."""
    if url.startswith("file:"):
        path = urlsplit(url).path if url.startswith("file://") else url[len("file:") :]
        if not path:
            raise ValueError(f"printer URL {url!r} has no file path: write file:/path/to/capture.bin")
        return FilePrinter(Path(path), width_cols=width_cols)
    parts = urlsplit(url)
    if parts.scheme == "tcp" and parts.hostname:
        try:
            port = parts.port or 9100
        except ValueError as e:
            raise ValueError(f"printer URL {url!r} has a bad port") from e
        return NetworkPrinter(parts.hostname, port, timeout_s=timeout_s, width_cols=width_cols)
    raise ValueError(f"printer URL {url!r} is not tcp://HOST:PORT or file:PATH")
