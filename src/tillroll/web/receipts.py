"""E-receipts at ``/r/<token>``: found by their signed token, shown as HTML or PDF.

The HTML is the terminal's own e-receipt page (:func:`tillroll.terminal.ereceipt.render_e_receipt`,
the cardholder copy), so the page a customer opens and the file a terminal writes when its
printer fails are one rendering. The PDF lays out the same fields (:func:`slip_fields`) with
reportlab's built-in CID font ``STSong-Light``: Chinese prints with no font file to download.
"""

from __future__ import annotations

import enum
import io
import json
import threading
from dataclasses import dataclass

from sqlalchemy import Engine, select

from tillroll.clock import Clock
from tillroll.crypto.backoffice import TokenClaims, TokenError, day_number, read_token, verify_token
from tillroll.crypto.keystore import KeyStore
from tillroll.store.tables import e_receipts
from tillroll.terminal.facts import slip_from_document
from tillroll.terminal.receipt import SIGNATURE_LABEL, TITLE_EN, TITLE_ZH, Copy, Slip, slip_fields
from tillroll.web.intake import terminal_key

CJK_FONT = "STSong-Light"
_font_lock = threading.Lock()
_font_ready = False


class Missing(enum.Enum):
    """Why no receipt is shown (each has its own bilingual page)."""

    INVALID = "invalid"  # malformed, tampered, another key: 404
    EXPIRED = "expired"  # 410
    NOT_YET = "not_yet"  # a valid link whose receipt has not arrived yet: 404

    @property
    def status(self) -> int:
        return 410 if self is Missing.EXPIRED else 404


@dataclass(frozen=True)
class Found:
    claims: TokenClaims
    slip: Slip


def find(engine: Engine, keystore: KeyStore, clock: Clock, token: str, ttl_days: int) -> Found | Missing:
    claims = read_token(token)
    if claims is None:
        return Missing.INVALID
    with engine.connect() as conn:
        key = terminal_key(conn, keystore, claims.tid)
        if key is None:
            return Missing.INVALID
        checked = verify_token(key, token, today_day=day_number(clock.now()), ttl_days=ttl_days)
        if checked is TokenError.EXPIRED:
            return Missing.EXPIRED
        if not isinstance(checked, TokenClaims):
            return Missing.INVALID
        row = conn.execute(
            select(e_receipts.c.slip).where(
                e_receipts.c.tid == checked.tid, e_receipts.c.reference == checked.reference
            )
        ).first()
    if row is None:
        return Missing.NOT_YET
    return Found(checked, slip_from_document(json.loads(row.slip)))


def _register_font() -> None:
    global _font_ready
    with _font_lock:
        if not _font_ready:
            from reportlab.pdfbase import pdfmetrics
            from reportlab.pdfbase.cidfonts import UnicodeCIDFont

            pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
            _font_ready = True


def receipt_pdf(slip: Slip, signature_png: bytes | None = None) -> bytes:
    """The cardholder copy as a one-page PDF (80 mm wide, as long as it needs), with the
    cardholder's electronic signature under it when there is one."""
    from reportlab.lib.units import mm
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    _register_font()
    width = 80 * mm
    margin = 5 * mm
    size, big = 8.5, 13.0
    lines: list[tuple[str, str, float, bool]] = []  # (label, value, font size, rule before)
    for f in slip_fields(slip):
        lines.append((f.label, f.value, big if f.large else size, f.rule_before))
    usable = width - 2 * margin
    rows: list[tuple[str, str, float, float, bool]] = []  # text, align, size, y-step, rule
    for label, value, fsize, rule in lines:
        rows.append((label, "left", size, size * 1.5, rule))
        for part in simpleSplit(value, CJK_FONT, fsize, usable) or [""]:
            rows.append((part, "right", fsize, fsize * 1.5, False))
    sig_h = 22 * mm if signature_png else 0.0
    height = 30 * mm + sum(r[3] for r in rows) + 6 * mm + sig_h
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(width, height), invariant=1)
    c.setTitle(f"{TITLE_ZH} {TITLE_EN} {slip.tid} {slip.trace}")
    y = height - 10 * mm
    c.setFont(CJK_FONT, 12)
    c.drawCentredString(width / 2, y, TITLE_ZH)
    y -= 5 * mm
    c.setFont(CJK_FONT, 9)
    c.drawCentredString(width / 2, y, TITLE_EN)
    y -= 4.5 * mm
    c.drawCentredString(width / 2, y, Copy.CARDHOLDER.label)
    y -= 3 * mm
    c.setDash(2, 2)
    c.line(margin, y, width - margin, y)
    y -= 4 * mm
    for text, align, fsize, step, rule in rows:
        if rule:
            c.line(margin, y + step * 0.55, width - margin, y + step * 0.55)
            y -= 2 * mm
        c.setFont(CJK_FONT, fsize)
        if align == "left":
            c.drawString(margin, y, text)
        else:
            c.drawRightString(width - margin, y, text)
        y -= step
    c.line(margin, y + 2 * mm, width - margin, y + 2 * mm)
    if signature_png:
        from reportlab.lib.utils import ImageReader

        y -= 4 * mm
        c.setFont(CJK_FONT, size)
        c.drawString(margin, y, SIGNATURE_LABEL)
        c.drawImage(
            ImageReader(io.BytesIO(signature_png)), margin, y - 17 * mm, width=usable, height=15 * mm,
            preserveAspectRatio=True, anchor="w", mask="auto",
        )  # fmt: skip
    c.showPage()
    c.save()
    return buf.getvalue()
