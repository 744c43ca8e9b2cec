"""Electronic signatures (电子签名) on paper: the merchant copy waits for the customer's signature.

A card sale's slip prints as soon as its approval is journalled (receipts.py). With a signature
pad, the cardholder signs *after* the approval, so :class:`SignaturePrinter` — a wrapper around the
terminal's printer — prints the cardholder copy at once and **holds the merchant copy** of a sale
whose signature was asked for (:meth:`SignaturePrinter.expect_signature`), until the signature is
given (:meth:`release`, which prints it with the image in the signing space) or refused (the copy
prints with the blank space, to be signed on paper). Every later print of a merchant copy — a
reprint — carries the stored signature, looked up by (TID, ``batch.trace``).

The image goes to the printer as an ESC/POS raster (GS v 0, python-escpos ``image``): the PNG is
flattened onto white, cropped to the ink, scaled to fit the line (at most ``MAX_HEIGHT_DOTS``
high) and thresholded to one bit per dot.

A held copy lives in memory only: if the process stops first, the merchant copy is printed by a
reprint (the signature itself is stored, so it is not lost).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from tillroll.terminal.printer import Printer, PrintError, PrinterStatus
from tillroll.terminal.receipt import Copy, Slip, TransType

MAX_HEIGHT_DOTS = 160  # 20 mm at 203 dpi: the signing space of the slip
INK_THRESHOLD = 160  # grey levels darker than this print as a dot

SignatureLookup = Callable[[str, str], bytes | None]  # (tid, "batch.trace") -> PNG or None


def slip_reference(slip: Slip) -> str:
    """The key a signature is stored under: ``batch.trace`` of the slip's approval."""
    return f"{slip.batch}.{slip.trace}"


def signature_raster(png: bytes, *, width_dots: int) -> Image.Image:
    """The signature as a 1-bit image that fits the line: white background, black ink."""
    with Image.open(io.BytesIO(png)) as src:
        src.load()
        rgba = src.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    grey = Image.alpha_composite(white, rgba).convert("L")
    ink = grey.point(lambda v: 255 if v < INK_THRESHOLD else 0)  # ink as white, for getbbox
    box = ink.getbbox()
    if box is not None:
        grey = grey.crop(box)
    scale = min(1.0, (width_dots * 0.9) / grey.width, MAX_HEIGHT_DOTS / grey.height)
    if scale < 1.0:
        size = (max(1, int(grey.width * scale)), max(1, int(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.LANCZOS)
    return grey.point(lambda v: 0 if v < INK_THRESHOLD else 255).convert("1")


@dataclass(frozen=True)
class Released:
    """What became of a held merchant copy: printed (``why`` None) or not, and why."""

    printed: bool
    why: str | None


class SignaturePrinter:
    """The terminal's printer, with merchant copies of signed sales held for their signature."""

    def __init__(self, inner: Printer, lookup: SignatureLookup) -> None:
        self.inner = inner
        self._lookup = lookup
        self._lock = threading.Lock()
        self._expect = False
        self._held: dict[tuple[str, str], Slip] = {}

    def status(self) -> PrinterStatus:
        return self.inner.status()

    def expect_signature(self, on: bool) -> None:
        """The next card sale's merchant copy waits for the customer's signature (or not)."""
        with self._lock:
            self._expect = on

    def held(self, tid: str, reference: str) -> bool:
        with self._lock:
            return (tid, reference) in self._held

    def print_slips(
        self,
        slips: Sequence[tuple[Slip, Copy]],
        *,
        reprint: bool = False,
        signatures: Sequence[bytes | None] = (),
    ) -> None:
        now: list[tuple[Slip, Copy]] = []
        hold: list[Slip] = []
        with self._lock:
            expect = self._expect
        for slip, copy in slips:
            if expect and not reprint and copy is Copy.MERCHANT and slip.trans_type is TransType.SALE:
                hold.append(slip)
            else:
                now.append((slip, copy))
        sigs = [
            self._lookup(slip.tid, slip_reference(slip)) if copy is Copy.MERCHANT else None
            for slip, copy in now
        ]
        self.inner.print_slips(now, reprint=reprint, signatures=sigs)
        with self._lock:  # only once the rest printed: a failed job is reprinted whole
            for slip in hold:
                self._held[(slip.tid, slip_reference(slip))] = slip
            self._expect = False

    def release(self, tid: str, reference: str) -> Released | None:
        """Print the held merchant copy of (tid, reference) with its stored signature, if any
        (None: no copy held). A copy that fails to print is dropped: reprint prints both."""
        with self._lock:
            slip = self._held.pop((tid, reference), None)
        if slip is None:
            return None
        try:
            signature = self._lookup(tid, reference)
            self.inner.print_slips([(slip, Copy.MERCHANT)], signatures=[signature])
        except (PrintError, OSError) as exc:  # told to the cashier: reprint
            return Released(False, str(exc))
        return Released(True, None)
