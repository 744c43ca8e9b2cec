"""A TCP ESC/POS receipt printer for tests: answers real-time status, "prints" text, cuts paper.

It listens on ``127.0.0.1`` (port 0 picks a free one) in a background thread, like a network
printer on port 9100, and understands the part of ESC/POS a receipt uses:

- **Real-time status** ``DLE EOT n`` is answered at once with one byte, in every state (Epson's
  layout; bits 1 and 4 always set): n=1 printer status, offline bit 0x08 unless READY; n=2
  offline cause, 0x20 "stopped by paper end" when PAPER_OUT, 0x40 "error" when JAMMED; n=3 error
  cause, 0x08 "autocutter error" when JAMMED; n=4 roll paper sensor, 0x60 "paper end" when
  PAPER_OUT. Other ``n`` get no answer, as on a real printer. ``DLE ENQ``/``DLE DC4`` are consumed.
- **Printing**: text bytes are decoded as GB18030 after ``FS &`` (Chinese character mode) and as
  code page 437 otherwise (``FS .`` leaves Chinese mode, ``ESC @`` resets it); ``LF`` ends a line,
  laid out on ``width_cols`` columns with the alignment of ``ESC a`` (a longer line wraps, as on
  paper); a QR code (``GS ( k`` store + print) prints as the line ``[QR] <content>``; ``GS V`` cuts
  the paper and ends a document. Bold, sizes, fonts, feeds and other commands are parsed by their
  length and otherwise ignored; raster images are skipped without buffering them.
- **Not READY prints nothing**: while PAPER_OUT or JAMMED, everything but the real-time commands
  is read and discarded (``discarded_bytes``), and the paper in progress is torn off
  (``spoiled_documents``); a job only counts once the printer is READY again and a new document
  is cut. ``jam_after_documents(n)`` jams the printer right after the n-th next cut.

``received()`` is every byte from every connection (up to ``max_received_bytes``), ``documents()``
the text of each cut document (the newest ``max_documents``), with trailing blank lines removed.

Bounds: at most ``max_connections`` clients (more are closed at once, ``rejected_connections``); a
client silent for ``idle_timeout_s`` is closed; a command that has not completed within
``max_command_bytes`` bytes closes the connection; replies wait at most ``send_timeout_s``.
``stop()`` ends the loop, closes every socket and joins the thread.
"""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType

from tillroll.terminal.receipt import QR_TEXT_PREFIX, Align, char_cols, pad_line

ESC, GS, FS, DLE = 0x1B, 0x1D, 0x1C, 0x10
LF, CR, HT = 0x0A, 0x0D, 0x09
EOT, ENQ, DC4 = 0x04, 0x05, 0x14

STATUS_FIXED = 0x12


class PrinterState(enum.Enum):
    READY = "ready"
    PAPER_OUT = "paper_out"
    JAMMED = "jammed"


def status_byte(state: PrinterState, n: int) -> int | None:
    """The answer to ``DLE EOT n`` in ``state`` (Epson ESC/POS), or None for an unknown ``n``."""
    if n == 1:
        return STATUS_FIXED | (0x08 if state is not PrinterState.READY else 0)
    if n == 2:
        return (
            STATUS_FIXED
            | (0x20 if state is PrinterState.PAPER_OUT else 0)
            | (0x40 if state is PrinterState.JAMMED else 0)
        )
    if n == 3:
        return STATUS_FIXED | (0x08 if state is PrinterState.JAMMED else 0)
    if n == 4:
        return STATUS_FIXED | (0x60 if state is PrinterState.PAPER_OUT else 0)
    return None


def _hard_wrap(text: str, width_cols: int) -> list[str]:
    """Paper wraps a too-long line at the last column, wherever that falls."""
    parts: list[str] = []
    cur, used = "", 0
    for ch in text:
        w = char_cols(ch)
        if used + w > width_cols and cur:
            parts.append(cur)
            cur, used = "", 0
        cur += ch
        used += w
    parts.append(cur)
    return parts


class _Need(Exception):
    """The command at the head of the buffer is not complete yet."""


# fixed total lengths of commands by prefix and second byte; anything unknown takes 2 bytes
_ESC_LEN = {
    ord("@"): 2, ord("2"): 2, ord("<"): 2, ord("!"): 3, ord("E"): 3, ord("-"): 3, ord("a"): 3,
    ord("t"): 3, ord("d"): 3, ord("J"): 3, ord("M"): 3, ord("G"): 3, ord("{"): 3, ord("R"): 3,
    ord("V"): 3, ord("3"): 3, ord(" "): 3, ord("%"): 3, ord("r"): 3, ord("U"): 3, ord("e"): 3,
    ord("K"): 3, ord("L"): 2, ord("S"): 2, ord("T"): 3, ord("c"): 4, ord("$"): 4, ord("\\"): 4,
    ord("p"): 5, ord("W"): 10, ord("="): 3, ord("?"): 3, ord("u"): 3, ord("v"): 2,
}  # fmt: skip
_GS_LEN = {
    ord("!"): 3, ord("B"): 3, ord("H"): 3, ord("h"): 3, ord("w"): 3, ord("f"): 3, ord("a"): 3,
    ord("r"): 3, ord("b"): 3, ord("I"): 3, ord("/"): 3, ord("E"): 3, ord("L"): 4, ord("W"): 4,
    ord("$"): 4, ord("\\"): 4, ord("P"): 4, ord("T"): 3, ord("^"): 5, ord(":"): 2,
}  # fmt: skip
_FS_LEN = {
    ord("&"): 2, ord("."): 2, ord("!"): 3, ord("-"): 3, ord("W"): 3, ord("C"): 3, ord("S"): 4,
    ord("p"): 4,
}  # fmt: skip


@dataclass
class _Conn:
    sock: socket.socket | None
    last_seen: float
    buf: bytearray = field(default_factory=bytearray)
    skip: int = 0  # bytes of a long command's data still to skip


class EscPosPaper:
    """The printer mechanism: parses an ESC/POS stream into documents. Not thread-safe by itself.

    Usable on its own for a captured stream (see :func:`decode_documents`).
    """

    def __init__(self, *, width_cols: int = 32, max_documents: int = 1000) -> None:
        self.width_cols = width_cols
        self.documents: deque[str] = deque(maxlen=max_documents)
        self.state = PrinterState.READY
        self.discarded_bytes = 0
        self.spoiled_documents = 0
        self.cuts_until_jam: int | None = None
        self._stream = _Conn(sock=None, last_seen=0.0)  # unparsed bytes of feed() without a connection
        self._reset_modes()
        self._lines: list[str] = []
        self._runs: list[tuple[bytes, str]] = []
        self._line_align: Align | None = None

    @property
    def ready(self) -> bool:
        return self.state is PrinterState.READY

    def set_state(self, state: PrinterState) -> None:
        self.state = state
        if state is not PrinterState.READY:
            self.tear_off()

    def _reset_modes(self) -> None:
        self._chinese = False
        self._align = Align.LEFT
        self._qr_data = b""

    # -- paper ---------------------------------------------------------------------------------

    def _has_paper_content(self) -> bool:
        return bool(self._lines or self._runs)

    def tear_off(self) -> None:
        """Throw away the document in progress (a jam or paper end spoils it)."""
        if self._has_paper_content():
            self.spoiled_documents += 1
        self._lines.clear()
        self._runs.clear()
        self._line_align = None

    def _text(self, data: bytes) -> None:
        data = data.replace(b"\t", b" ")
        if self._line_align is None:
            self._line_align = self._align  # alignment is taken at the start of a line
        encoding = "gb18030" if self._chinese else "cp437"
        if self._runs and self._runs[-1][1] == encoding:
            self._runs[-1] = (self._runs[-1][0] + data, encoding)
        else:
            self._runs.append((data, encoding))

    def _newline(self) -> None:
        text = "".join(raw.decode(enc, errors="replace") for raw, enc in self._runs)
        align = self._line_align or self._align
        parts = _hard_wrap(text, self.width_cols)
        self._lines += [pad_line(p, align, self.width_cols).rstrip() for p in parts]
        self._runs.clear()
        self._line_align = None

    def _flush_partial_line(self) -> None:
        if self._runs:
            self._newline()

    def _print_qr(self) -> None:
        self._flush_partial_line()
        text = QR_TEXT_PREFIX + self._qr_data.decode("utf-8", errors="replace")
        self._lines.append(pad_line(text, self._align, self.width_cols).rstrip())

    def _cut(self) -> None:
        self._flush_partial_line()
        while self._lines and not self._lines[-1].strip():
            self._lines.pop()
        if self._lines:
            self.documents.append("\n".join(self._lines))
            self._lines = []
            if self.cuts_until_jam is not None:
                self.cuts_until_jam -= 1
                if self.cuts_until_jam <= 0:
                    self.cuts_until_jam = None
                    self.set_state(PrinterState.JAMMED)

    # -- parsing -------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray, conn: _Conn | None = None) -> bytes:
        """Parse ``data`` (appended to ``conn``'s unparsed bytes); returns the status replies."""
        c = conn if conn is not None else self._stream
        c.buf += data
        replies = bytearray()
        pos = 0
        buf = c.buf
        try:
            while pos < len(buf):
                if c.skip:
                    take = min(c.skip, len(buf) - pos)
                    c.skip -= take
                    pos += take
                    if not self.ready:
                        self.discarded_bytes += take
                    continue
                start, was_ready, realtime = pos, self.ready, buf[pos] == DLE
                pos = self._command(buf, pos, c, replies)
                if not was_ready and not realtime:
                    self.discarded_bytes += pos - start
        except _Need:
            pass
        del buf[:pos]
        return bytes(replies)

    def _command(self, buf: bytearray, pos: int, c: _Conn, replies: bytearray) -> int:
        """Execute the command or text at ``pos``; returns the position after it."""
        b = buf[pos]
        if b == DLE:
            return self._dle(buf, pos, replies)
        if b in (ESC, GS, FS):
            header, data_len = self._length(buf, pos)
            need, avail = header + data_len, len(buf) - pos
            if need > avail:
                if data_len and header <= avail and not self._is_2d_code(buf, pos):
                    # image data is never looked at: skip it as it arrives instead of buffering it
                    c.skip = need - avail
                    if not self.ready:
                        self.tear_off()
                    return len(buf)
                raise _Need
            if self.ready:
                self._execute(bytes(buf[pos : pos + need]))
            else:
                self.tear_off()
            return pos + need
        # text and control characters up to the next command prefix
        end = pos
        while end < len(buf) and buf[end] not in (ESC, GS, FS, DLE):
            end += 1
        chunk = bytes(buf[pos:end])
        if self.ready:
            self._plain(chunk)
        else:
            self.tear_off()
        return end

    def _plain(self, chunk: bytes) -> None:
        start = 0
        for i, b in enumerate(chunk):
            if b >= 0x20 or b == HT:
                continue
            if i > start:
                self._text(chunk[start:i])
            if b == LF:
                self._newline()
            start = i + 1
        if start < len(chunk):
            self._text(chunk[start:])

    def _dle(self, buf: bytearray, pos: int, replies: bytearray) -> int:
        if len(buf) - pos < 2:
            raise _Need
        sub = buf[pos + 1]
        if sub in (EOT, ENQ):
            if len(buf) - pos < 3:
                raise _Need
            if sub == EOT:
                reply = status_byte(self.state, buf[pos + 2])
                if reply is not None:
                    replies.append(reply)
            return pos + 3
        if sub == DC4:
            if len(buf) - pos < 5:
                raise _Need
            return pos + 5
        return pos + 1  # a lone DLE: a control character, nothing printed

    @staticmethod
    def _is_2d_code(buf: bytearray, pos: int) -> bool:
        return buf[pos] == GS and bytes(buf[pos + 1 : pos + 3]) == b"(k"

    @staticmethod
    def _need(buf: bytearray, pos: int, n: int) -> None:
        if len(buf) - pos < n:
            raise _Need

    def _length(self, buf: bytearray, pos: int) -> tuple[int, int]:
        """(header length, data length) of the ESC/GS/FS command at ``pos``."""
        self._need(buf, pos, 2)
        prefix, op = buf[pos], buf[pos + 1]
        if prefix == ESC:
            if op == ord("*"):  # ESC * m nL nH d...
                self._need(buf, pos, 5)
                dots = buf[pos + 3] + 256 * buf[pos + 4]
                return 5, dots * (1 if buf[pos + 2] in (0, 1) else 3)
            if op == ord("("):  # ESC ( x pL pH ...
                self._need(buf, pos, 5)
                return 5, buf[pos + 3] + 256 * buf[pos + 4]
            if op == ord("D"):  # ESC D n1 ... NUL
                return self._nul_terminated(buf, pos, 2, 34), 0
            return _ESC_LEN.get(op, 2), 0
        if prefix == GS:
            if op == ord("("):  # GS ( x pL pH ...
                self._need(buf, pos, 5)
                return 5, buf[pos + 3] + 256 * buf[pos + 4]
            if op == ord("V"):  # GS V m [n]
                self._need(buf, pos, 3)
                return (4 if buf[pos + 2] in (65, 66, 97, 98, 103, 104) else 3), 0
            if op == ord("v"):  # GS v 0 m xL xH yL yH d...
                self._need(buf, pos, 8)
                x = buf[pos + 4] + 256 * buf[pos + 5]
                y = buf[pos + 6] + 256 * buf[pos + 7]
                return 8, x * y
            if op == ord("8"):  # GS 8 L p1 p2 p3 p4 ...
                self._need(buf, pos, 7)
                return 7, int.from_bytes(buf[pos + 3 : pos + 7], "little")
            if op == ord("*"):  # GS * x y d...
                self._need(buf, pos, 4)
                return 4, buf[pos + 2] * buf[pos + 3] * 8
            if op == ord("k"):  # GS k m ...
                self._need(buf, pos, 3)
                m = buf[pos + 2]
                if m <= 6:
                    return self._nul_terminated(buf, pos, 3, 260), 0
                self._need(buf, pos, 4)
                return 4, buf[pos + 3]
            return _GS_LEN.get(op, 2), 0
        if op == ord("("):  # FS ( x pL pH ...
            self._need(buf, pos, 5)
            return 5, buf[pos + 3] + 256 * buf[pos + 4]
        return _FS_LEN.get(op, 2), 0

    @staticmethod
    def _nul_terminated(buf: bytearray, pos: int, start: int, limit: int) -> int:
        end = buf.find(b"\x00", pos + start, pos + limit)
        if end < 0:
            if len(buf) - pos >= limit:
                return limit  # malformed: give up on it
            raise _Need
        return end - pos + 1

    def _execute(self, cmd: bytes) -> None:
        prefix, op = cmd[0], cmd[1]
        if prefix == ESC:
            if op == ord("@"):
                self._runs.clear()
                self._line_align = None
                self._reset_modes()
            elif op == ord("a"):
                self._align = {0: Align.LEFT, 1: Align.CENTER, 2: Align.RIGHT}.get(cmd[2] % 48, Align.LEFT)
            elif op in (ord("d"), ord("J")):
                self._flush_partial_line()
        elif prefix == GS:
            if op == ord("V"):
                self._cut()
            elif op == ord("(") and cmd[2] == ord("k") and len(cmd) >= 8 and cmd[5] == 49:
                fn = cmd[6]
                if fn == 80:  # store the symbol data (after m)
                    self._qr_data = cmd[8:]
                elif fn == 81:  # print the stored symbol
                    self._print_qr()
        elif prefix == FS:
            if op == ord("&"):
                self._chinese = True
            elif op == ord("."):
                self._chinese = False


def decode_documents(stream: bytes, *, width_cols: int = 32) -> list[str]:
    """The documents a READY printer would print from ``stream`` (e.g. a ``file:`` capture)."""
    paper = EscPosPaper(width_cols=width_cols, max_documents=100_000)
    paper.feed(stream)
    return list(paper.documents)


class PrinterEmulator:
    """A network ESC/POS printer on 127.0.0.1 with a settable state; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        width_cols: int = 32,
        max_connections: int = 8,
        idle_timeout_s: float = 10.0,
        send_timeout_s: float = 1.0,
        max_received_bytes: int = 8 * 1024 * 1024,
        max_documents: int = 1000,
        max_command_bytes: int = 70_000,
    ) -> None:
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_received_bytes = max_received_bytes
        self.max_command_bytes = max_command_bytes
        self._lock = threading.Lock()
        self._paper = EscPosPaper(width_cols=width_cols, max_documents=max_documents)
        self._received = bytearray()
        self.received_overflow_bytes = 0
        self.rejected_connections = 0
        self.total_connections = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conns: dict[socket.socket, _Conn] = {}
        self._failure: Exception | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("printer emulator already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(16)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"printer-emulator-{self._port}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError("printer emulator thread did not stop")
            self._thread = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError("the printer emulator's loop failed") from failure

    def __enter__(self) -> PrinterEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("printer emulator not started")
        return self._port

    @property
    def url(self) -> str:
        return f"tcp://{self._host}:{self.port}"

    # -- state and records ---------------------------------------------------------------------

    @property
    def state(self) -> PrinterState:
        with self._lock:
            return self._paper.state

    @state.setter
    def state(self, value: PrinterState) -> None:
        with self._lock:
            self._paper.set_state(PrinterState(value))

    def jam_after_documents(self, n: int) -> None:
        """Jam the printer right after the n-th next cut document (a jam in the middle of a job)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            self._paper.cuts_until_jam = n

    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def documents(self) -> list[str]:
        with self._lock:
            return list(self._paper.documents)

    @property
    def discarded_bytes(self) -> int:
        with self._lock:
            return self._paper.discarded_bytes

    @property
    def spoiled_documents(self) -> int:
        with self._lock:
            return self._paper.spoiled_documents

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self.received_overflow_bytes = 0
            self._paper.documents.clear()
            self._paper.tear_off()
            self._paper.discarded_bytes = 0
            self._paper.spoiled_documents = 0

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.05):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    else:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        self._serve(sel, sock)
                self._close_idle(sel)
        except Exception as e:  # a bug in the emulator: reported by stop(), not lost in the thread
            self._failure = e
        finally:
            for sock in list(self._conns):
                self._drop(sel, sock)
            sel.unregister(self._listener)
            sel.close()
            self._listener.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(self._conns) >= self.max_connections:
            self.rejected_connections += 1
            sock.close()
            return
        self.total_connections += 1
        sock.settimeout(self.send_timeout_s)
        self._conns[sock] = _Conn(sock=sock, last_seen=time.monotonic())
        sel.register(sock, selectors.EVENT_READ)

    def _drop(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        self._conns.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(sock)
        sock.close()

    def _close_idle(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for sock, conn in list(self._conns.items()):
            if now - conn.last_seen > self.idle_timeout_s:
                self._drop(sel, sock)

    def _serve(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        conn = self._conns.get(sock)
        if conn is None:
            return
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop(sel, sock)
            return
        conn.last_seen = time.monotonic()
        with self._lock:
            room = self.max_received_bytes - len(self._received)
            self._received += data[: max(room, 0)]
            self.received_overflow_bytes += max(len(data) - max(room, 0), 0)
            replies = self._paper.feed(data, conn)
            too_long = len(conn.buf) > self.max_command_bytes
        if replies:
            try:
                sock.sendall(replies)
            except OSError:
                self._drop(sel, sock)
                return
        if too_long:
            self._drop(sel, sock)
