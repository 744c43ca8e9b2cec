"""The evidence bundle of one payment, for a dispute: the payment story as JSON and as a PDF.

Both come from part C's :func:`tillroll.recon.story.payment_story` (a plain dataclass tree), so
they say the same: the JSON is ``Story.to_json()`` plus who exported it and when; the PDF prints
the identity, the diagnosis in 中文 and English, the timeline and the notifications with their
delivery attempts. Chinese prints with reportlab's built-in CID font STSong-Light (no font file,
as the e-receipt PDFs). Nothing secret is in either: the story holds masked card numbers only.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime
from typing import Any

from tillroll.recon.story import Story

CJK_FONT = "STSong-Light"
_font_lock = threading.Lock()


def bundle_json(story: Story, *, exported_by: str, exported_at: datetime) -> str:
    document = {
        "bundle": "tillroll payment evidence",
        "exported_by": exported_by,
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "story": story.to_dict(),
    }
    return json.dumps(document, ensure_ascii=False, sort_keys=True, indent=2)


def _font() -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    with _font_lock:
        if CJK_FONT not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))


def _scalar(value: Any) -> str:
    return "" if value is None else str(value)


def bundle_pdf(story: Story, *, exported_by: str, exported_at: datetime, merchant: str) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    _font()
    buf = io.BytesIO()
    width, height = A4
    margin = 15 * mm
    c = canvas.Canvas(buf, pagesize=A4, invariant=1)
    c.setTitle(f"evidence {story.reference}")
    y = height - margin

    def line(text: str, size: float = 9, indent: float = 0) -> None:
        nonlocal y
        for part in simpleSplit(text, CJK_FONT, size, width - 2 * margin - indent) or [""]:
            if y < margin + size:
                c.showPage()
                y = height - margin
            c.setFont(CJK_FONT, size)
            c.drawString(margin + indent, y, part)
            y -= size * 1.45

    line("交易证据包 · Payment evidence bundle", 14)
    line(f"{merchant} · 参考号 reference {story.reference}", 10)
    line(f"导出 exported by {exported_by} at {exported_at.isoformat(timespec='seconds')} UTC", 8)
    y -= 4
    line("交易 · Payment", 11)
    for key, value in story.identity.items():
        line(f"{key}: {_scalar(value)}", 9, 8)
    y -= 4
    line("诊断 · Diagnosis", 11)
    line(story.diagnosis.text("zh") or "—", 9, 8)
    line(story.diagnosis.text("en") or "—", 9, 8)
    y -= 4
    line("经过 · Timeline (UTC)", 11)
    for record in story.timeline:
        line(f"{record.at or '—'}  [{record.source}]  {record.title_zh} · {record.title_en}", 9, 8)
        details = ", ".join(f"{k}={_scalar(v)}" for k, v in record.fields.items())
        if details:
            line(details, 7.5, 20)
    y -= 4
    line("通知 · Notifications", 11)
    if not story.notifications:
        line("—", 9, 8)
    for note in story.notifications:
        line(f"{note.created_at}  {note.kind} · {note.channel} → {note.recipient}: {note.state}", 9, 8)
        for attempt in note.attempts:
            line(", ".join(f"{k}={_scalar(v)}" for k, v in attempt.items()), 7.5, 20)
    y -= 4
    line("异常 · Reconciliation exceptions", 11)
    if not story.exceptions:
        line("—", 9, 8)
    for ex in story.exceptions:
        line(f"#{ex.id} {ex.klass} ({ex.state}) owner {ex.owner or '—'} · {ex.business_date}", 9, 8)
        for action in ex.actions:
            line(", ".join(f"{k}={_scalar(v)}" for k, v in action.items()), 7.5, 20)
    c.showPage()
    c.save()
    return buf.getvalue()
