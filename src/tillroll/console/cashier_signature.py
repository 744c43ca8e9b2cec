"""The customer's electronic signature (电子签名): checked, stored with its transaction, read back.

The cashier screen posts what was drawn on its canvas as a PNG. It is accepted only if it is a
real PNG (Pillow opens and fully decodes it), within ``MAX_BYTES`` and the pixel bounds below, and
has some ink on it (an untouched pad is not a signature). It is stored once per (TID,
``batch.trace`` or order number) in ``signatures`` with an audit row in the same transaction; a
second signature for the same payment is refused (the first one is what the customer signed).
"""

from __future__ import annotations

import io
from datetime import datetime

from PIL import Image, UnidentifiedImageError
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from tillroll.console.audit import record
from tillroll.store.tables import signatures

MAX_BYTES = 256 * 1024
MIN_SIDE_PX, MAX_SIDE_PX = 40, 2000
MIN_INK_PX = 30  # fewer dark pixels than this: nothing was drawn
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SignatureRefused(ValueError):
    """Why a posted signature was not kept, in 中文 and English (shown on the cashier screen)."""


def check_png(png: bytes) -> bytes:
    """The PNG as given, if it is a signature we keep; else :class:`SignatureRefused`."""
    if len(png) > MAX_BYTES:
        raise SignatureRefused(
            f"签名图片过大 / the signature image is too large ({len(png)} bytes, at most {MAX_BYTES}): "
            "clear the pad and sign again"
        )
    if not png.startswith(PNG_MAGIC):
        raise SignatureRefused("签名不是PNG图片 / the signature is not a PNG image: sign again on the pad")
    try:
        with Image.open(io.BytesIO(png)) as img:
            if img.format != "PNG":
                raise SignatureRefused("签名不是PNG图片 / the signature is not a PNG image")
            width, height = img.size
            if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
                raise SignatureRefused(
                    f"签名图片尺寸不符 / the signature image is {width}×{height} px; "
                    f"each side must be {MIN_SIDE_PX}–{MAX_SIDE_PX} px"
                )
            img.load()  # decodes every byte: a truncated or corrupt PNG fails here
            rgba = img.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, SignatureRefused):
            raise
        raise SignatureRefused(
            "签名图片已损坏 / the signature image cannot be read: clear the pad and sign again"
        ) from exc
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    grey = Image.alpha_composite(white, rgba).convert("L")
    dark = sum(grey.histogram()[:128])
    if dark < MIN_INK_PX:
        raise SignatureRefused("签名为空 / the pad is empty: ask the customer to sign, then confirm")
    return png


def store_signature(
    engine: Engine, *, tid: str, reference: str, png: bytes, at: datetime, actor: str, mid: str | None
) -> int:
    """Keep a checked signature with its transaction; returns its id. A second one is refused."""
    png = check_png(png)
    try:
        with engine.begin() as conn:
            sid = conn.execute(
                insert(signatures)
                .values(tid=tid, reference=reference, png=png, created_at=at)
                .returning(signatures.c.id)
            ).scalar_one()
            record(
                conn,
                at=at,
                actor=actor,
                action="signature.stored",
                target=f"{tid}:{reference}",
                mid=mid,
                after={"signature_id": int(sid), "bytes": len(png)},
            )
    except IntegrityError:
        raise SignatureRefused(
            f"该笔交易已有签名 / transaction {reference} on {tid} is already signed: "
            "the first signature is kept"
        ) from None
    return int(sid)


def load_signature(engine: Engine, tid: str, reference: str) -> bytes | None:
    with engine.connect() as conn:
        png = conn.execute(
            select(signatures.c.png).where(signatures.c.tid == tid, signatures.c.reference == reference)
        ).scalar()
    return bytes(png) if png is not None else None
