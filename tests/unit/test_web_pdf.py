"""The e-receipt PDF: the cardholder copy's fields, Chinese in the built-in CID font."""

from __future__ import annotations

import io
from datetime import datetime

import pypdf

from tillroll.terminal.receipt import Slip, TransType, slip_fields
from tillroll.web.receipts import CJK_FONT, receipt_pdf


def slip(**kw: object) -> Slip:
    values: dict[str, object] = {
        "merchant_name": "测试便利店",
        "mid": "898100012345678",
        "tid": "10000001",
        "operator": "001",
        "pan_masked": "622202*********0123",
        "entry_mode": "M",
        "issuer": "TILLROLL BANK",
        "acquirer": "00010000",
        "expiry_yymm": "3012",
        "trans_type": TransType.SALE,
        "batch": "000001",
        "trace": "000003",
        "auth_code": "123456",
        "rrn": "000000000003",
        "when": datetime(2026, 11, 29, 14, 5, 9),
        "amount_minor": 1250,
    }
    values.update(kw)
    return Slip(**values)  # type: ignore[arg-type]


def text_of(pdf: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def test_the_pdf_has_every_field_of_the_cardholder_copy() -> None:
    s = slip()
    pdf = receipt_pdf(s)
    assert pdf.startswith(b"%PDF-")
    text = text_of(pdf)
    for f in slip_fields(s):
        assert f.label in text and f.value in text, f.key
    assert "RMB 12.50" in text and "测试便利店" in text and "持卡人存根 CARDHOLDER COPY" in text
    assert "2026/11/29 14:05:09" in text and "622202*********0123" in text


def test_chinese_uses_the_built_in_cid_font_and_nothing_is_embedded() -> None:
    pdf = receipt_pdf(slip())
    assert CJK_FONT.encode() in pdf
    assert b"/FontFile" not in pdf  # no font program inside: the reader's own STSong


def test_a_refund_shows_the_minus_sign_and_long_names_wrap_inside_the_page() -> None:
    long_name = "上海市浦东新区陆家嘴环路一千号国际金融中心地下一层便利店" * 2
    s = slip(trans_type=TransType.REFUND, amount_minor=400, merchant_name=long_name[:80])
    text = text_of(receipt_pdf(s))
    assert "RMB -4.00" in text and "退货 REFUND" in text
    assert long_name[:10] in text


def test_the_same_receipt_gives_the_same_bytes() -> None:
    assert receipt_pdf(slip()) == receipt_pdf(slip())
