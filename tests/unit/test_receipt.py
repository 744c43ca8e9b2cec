"""The sales slip layout (RECEIPT.md), the e-receipt and the memory printer: pure, no IO but tmp files."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest

from tillroll.pan import mask_pan
from tillroll.terminal.ereceipt import render_e_receipt, write_e_receipt
from tillroll.terminal.printer import MemoryPrinter, PrintError, PrinterStatus, decode_status
from tillroll.terminal.receipt import (
    CONSENT_EN,
    CONSENT_ZH,
    Align,
    Copy,
    Slip,
    SlipLine,
    TransType,
    display_width,
    render_slip,
    slip_text,
    wrap_cols,
)

FULL_PAN = "6222021234567890123"
MASKED = mask_pan(FULL_PAN)


def make_slip(**changes: object) -> Slip:
    slip = Slip(
        merchant_name="一号便利店",
        mid="898310048990001",
        tid="10000001",
        operator="001",
        pan_masked=MASKED,
        entry_mode="I",
        issuer="工商银行",
        acquirer="银联商务",
        expiry_yymm="2812",
        trans_type=TransType.SALE,
        batch="000001",
        trace="000123",
        auth_code="A1B2C3",
        rrn="123456789012",
        when=datetime(2026, 11, 29, 9, 30, 15),
        amount_minor=1250,
    )
    return dataclasses.replace(slip, **changes)  # type: ignore[arg-type]


def texts(lines: list[SlipLine]) -> list[str]:
    return [line.text for line in lines]


@pytest.mark.parametrize("width", [32, 48])
@pytest.mark.parametrize("copy", list(Copy))
def test_every_line_fits_the_paper(width: int, copy: Copy) -> None:
    slip = make_slip(
        merchant_name="上海市浦东新区张江高科技园区一号便利店有限公司（南京西路店）",
        reference="原凭证号 ORIG VOUCHER 000122 RRN 123456789011 电子签名 E-SIGNATURE",
        e_receipt_url="https://r.example.cn/e/10000001-000001-000123",
    )
    lines = render_slip(slip, copy, width_cols=width)
    for line in lines:
        if not line.is_qr:
            assert display_width(line.text) <= width, line.text
    for row in slip_text(slip, copy, width_cols=width).splitlines():
        if "[QR]" not in row:
            assert display_width(row) <= width, row


@pytest.mark.parametrize("width", [32, 48])
def test_required_lines_in_receipt_order(width: int) -> None:
    text = slip_text(make_slip(reference="原凭证号 ORIG VOUCHER 000122"), Copy.MERCHANT, width_cols=width)
    order = [
        "POS签购单",
        "POS SALES SLIP",
        "商户存根 MERCHANT COPY",
        "商户名称 MERCHANT NAME",
        "一号便利店",
        "商户编号 MERCHANT NO.",
        "898310048990001",
        "终端编号 TERMINAL NO.",
        "10000001",
        "操作员号 OPERATOR NO.",
        "卡号 CARD NO.",
        "622202*********0123 I",
        "发卡行 ISSUER",
        "工商银行",
        "收单行 ACQUIRER",
        "银联商务",
        "有效期 EXP DATE",
        "2028/12",
        "交易类型 TRANS TYPE",
        "消费 SALE",
        "批次号 BATCH NO.",
        "000001",
        "凭证号 VOUCHER NO.",
        "000123",
        "授权码 AUTH NO.",
        "A1B2C3",
        "参考号 REFER NO.",
        "123456789012",
        "日期/时间 DATE/TIME",
        "2026/11/29 09:30:15",
        "金额 AMOUNT",
        "RMB 12.50",
        "备注 REFERENCE",
        "原凭证号 ORIG VOUCHER 000122",
        "持卡人签名 CARDHOLDER SIGNATURE",
    ]
    at = 0
    for needle in order:
        found = text.find(needle, at)
        assert found >= 0, f"{needle!r} missing or out of order in\n{text}"
        at = found + len(needle)


def test_narrow_paper_breaks_long_fields_wide_paper_keeps_them_on_one_line() -> None:
    slip = make_slip()
    narrow = slip_text(slip, Copy.CARDHOLDER, width_cols=32).splitlines()
    wide = slip_text(slip, Copy.CARDHOLDER, width_cols=48).splitlines()
    assert "卡号 CARD NO.:" in narrow and "622202*********0123 I" in narrow
    card_line = next(row for row in wide if row.startswith("卡号 CARD NO.:"))
    assert card_line.endswith("622202*********0123 I") and display_width(card_line) == 48
    # short fields sit on one line, value flush right, on both widths
    for rows, width in ((narrow, 32), (wide, 48)):
        tid = next(row for row in rows if row.startswith("终端编号 TERMINAL NO.:"))
        assert tid.endswith("10000001") and display_width(tid) == width


def test_cjk_characters_take_two_columns() -> None:
    assert display_width("消费") == 4
    assert display_width("RMB 12.50") == 9
    assert display_width("（）") == 4  # full-width punctuation
    assert display_width("·") == 2  # ambiguous: double-byte on a GB18030 printer
    assert wrap_cols("一二三四五六七八九十一二三四五六七", 32) == ["一二三四五六七八九十一二三四五六", "七"]
    title = render_slip(make_slip(), Copy.MERCHANT)[0]
    assert title == SlipLine("POS签购单", bold=True, double_height=True, align=Align.CENTER)
    # POS签购单 is 3 + 3 x 2 = 9 columns: centred on 32 it gets (32 - 9) // 2 = 11 spaces
    assert slip_text(make_slip(), Copy.MERCHANT).splitlines()[0] == " " * 11 + "POS签购单"


def test_english_wraps_at_spaces() -> None:
    assert wrap_cols(CONSENT_EN, 32) == [
        "I ACKNOWLEDGE SATISFACTORY",
        "RECEIPT OF RELATIVE",
        "GOODS/SERVICES",
    ]
    assert wrap_cols("X" * 40, 32) == ["X" * 32, "X" * 8]


@pytest.mark.parametrize(
    ("trans_type", "zh", "amount"),
    [
        (TransType.SALE, "消费 SALE", "RMB 12.50"),
        (TransType.VOID, "消费撤销 VOID", "RMB -12.50"),
        (TransType.REFUND, "退货 REFUND", "RMB -12.50"),
        (TransType.QR_PAY, "扫码支付 QR PAY", "RMB 12.50"),
    ],
)
def test_trans_type_and_sign_of_the_amount(trans_type: TransType, zh: str, amount: str) -> None:
    lines = render_slip(make_slip(trans_type=trans_type), Copy.CARDHOLDER)
    amount_line = next(line for line in lines if line.text.startswith("RMB"))
    assert amount_line == SlipLine(amount, bold=True, double_height=True)
    assert zh in slip_text(make_slip(trans_type=trans_type), Copy.CARDHOLDER)
    assert trans_type.label == zh


def test_amount_is_formatted_from_fen() -> None:
    assert "RMB 0.05" in slip_text(make_slip(amount_minor=5), Copy.MERCHANT)
    assert "RMB 1234567.89" in slip_text(make_slip(amount_minor=123456789), Copy.MERCHANT)
    with pytest.raises(ValueError, match="negative"):
        make_slip(amount_minor=-1250)
    with pytest.raises(TypeError):
        make_slip(amount_minor=12.5)


def test_reprint_mark_sits_under_the_title() -> None:
    plain = texts(render_slip(make_slip(), Copy.MERCHANT))
    reprint = texts(render_slip(make_slip(), Copy.MERCHANT, reprint=True))
    assert "重打印 REPRINT" not in plain
    assert reprint[:4] == ["POS签购单", "POS SALES SLIP", "重打印 REPRINT", "商户存根 MERCHANT COPY"]
    assert reprint[:2] + reprint[3:] == plain


def test_signature_and_consent_only_on_the_merchant_copy() -> None:
    merchant = slip_text(make_slip(), Copy.MERCHANT)
    cardholder = slip_text(make_slip(), Copy.CARDHOLDER)
    assert "商户存根 MERCHANT COPY" in merchant and "持卡人存根 CARDHOLDER COPY" in cardholder
    assert "持卡人签名 CARDHOLDER SIGNATURE:" in merchant
    assert "_" * 32 in merchant
    assert CONSENT_ZH[:10] in merchant and "I ACKNOWLEDGE SATISFACTORY" in merchant
    for merchant_only in ("CARDHOLDER SIGNATURE", CONSENT_ZH[:10], "ACKNOWLEDGE", "_" * 32):
        assert merchant_only not in cardholder
    # the rest is the same on both copies
    same = cardholder.splitlines()[3:]
    assert merchant.splitlines()[3 : 3 + len(same)] == same


def test_e_receipt_qr_only_when_there_is_an_address() -> None:
    assert not any(line.is_qr for line in render_slip(make_slip(), Copy.CARDHOLDER))
    url = "https://r.example.cn/e/10000001-000001-000123"
    lines = render_slip(make_slip(e_receipt_url=url), Copy.CARDHOLDER)
    assert lines[-2].text == "电子凭证 E-RECEIPT"
    assert lines[-1] == SlipLine(url, align=Align.CENTER, is_qr=True)
    too_long = render_slip(make_slip(e_receipt_url="https://x/" + "a" * 600), Copy.CARDHOLDER)
    assert not any(line.is_qr for line in too_long)


def test_a_full_card_number_is_never_printed() -> None:
    for pan in (FULL_PAN, "6222 0212 3456 7890 123"):
        slip = make_slip(pan_masked=pan)
        for copy in Copy:
            for width in (32, 48):
                text = slip_text(slip, copy, width_cols=width)
                assert FULL_PAN not in text.replace(" ", "")
                assert "622202*********0123 I" in text


def test_qr_pay_without_card_prints_no_card_lines() -> None:
    slip = make_slip(
        trans_type=TransType.QR_PAY, pan_masked="", entry_mode="", issuer="", expiry_yymm=None, auth_code=""
    )
    text = slip_text(slip, Copy.CARDHOLDER)
    for absent in ("CARD NO.", "ISSUER", "EXP DATE", "AUTH NO."):
        assert absent not in text
    assert "扫码支付 QR PAY" in text and "收单行 ACQUIRER" in text


def test_control_characters_cannot_reach_the_printer() -> None:
    slip = make_slip(merchant_name="A\x1bd\x09B\x1dV\x00C\u202eD", reference="X\nY")
    text = slip_text(slip, Copy.MERCHANT, width_cols=48)
    assert not any(ord(ch) < 0x20 and ch != "\n" for ch in text)
    assert "\u202e" not in text
    assert "A d B V CD" in text and "X Y" in text


def test_bad_slip_data_is_refused() -> None:
    with pytest.raises(ValueError, match="entry_mode"):
        make_slip(entry_mode="chip")
    with pytest.raises(ValueError, match="width_cols"):
        render_slip(make_slip(), Copy.MERCHANT, width_cols=20)
    assert make_slip(trans_type="VOID").trans_type is TransType.VOID  # a str value is coerced


def test_status_bytes_decode_per_epson() -> None:
    assert decode_status(0x12, 0x12, 0x12) is PrinterStatus.READY
    assert decode_status(0x1A, 0x32, 0x72) is PrinterStatus.PAPER_OUT
    assert decode_status(0x1A, 0x52, 0x12) is PrinterStatus.JAMMED
    assert decode_status(0x1A, 0x16, 0x12) is PrinterStatus.JAMMED  # cover open
    assert decode_status(0x1A, 0x12, 0x12) is PrinterStatus.OFFLINE
    assert decode_status(0x00, 0x12, 0x12) is PrinterStatus.OFFLINE  # fixed bits missing: not a printer


def test_memory_printer_records_and_fails_on_demand() -> None:
    printer = MemoryPrinter()
    slip = make_slip()
    printer.print_slips([(slip, Copy.MERCHANT), (slip, Copy.CARDHOLDER)])
    assert [(p.copy, p.reprint) for p in printer.printed] == [
        (Copy.MERCHANT, False),
        (Copy.CARDHOLDER, False),
    ]
    assert printer.texts()[0] == slip_text(slip, Copy.MERCHANT)
    printer.set_status(PrinterStatus.PAPER_OUT)
    assert printer.status() is PrinterStatus.PAPER_OUT
    with pytest.raises(PrintError, match="缺纸") as err:
        printer.print_slips([(slip, Copy.CARDHOLDER)], reprint=True)
    assert err.value.status is PrinterStatus.PAPER_OUT
    assert "reprint" in str(err.value)
    assert len(printer.printed) == 2


def test_e_receipt_is_escaped_bilingual_and_masked(tmp_path: Path) -> None:
    slip = make_slip(
        merchant_name='<script>alert("x")</script>&一号店',
        pan_masked=FULL_PAN,
        reference="原凭证号 ORIG VOUCHER <b>000122</b>",
        e_receipt_url='https://r.example.cn/e/1"onmouseover="x',
    )
    path = write_e_receipt(slip, tmp_path / "receipts")
    assert path == tmp_path / "receipts" / "10000001-000001-000123.html"
    page = path.read_text(encoding="utf-8")
    assert page == render_e_receipt(slip)
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;一号店" in page
    assert 'href="https://r.example.cn/e/1&quot;onmouseover=&quot;x"' in page
    assert FULL_PAN not in page and MASKED in page
    for label in ("POS签购单", "POS SALES SLIP", "持卡人存根 CARDHOLDER COPY", "金额 AMOUNT", "RMB 12.50"):
        assert label in page
    assert "CARDHOLDER SIGNATURE" not in page
    assert "default-src 'none'" in page
    # writing again replaces the file and leaves no temporary behind
    write_e_receipt(dataclasses.replace(slip, amount_minor=99), tmp_path / "receipts")
    assert [p.name for p in (tmp_path / "receipts").iterdir()] == ["10000001-000001-000123.html"]
    assert "RMB 0.99" in path.read_text(encoding="utf-8")


def test_e_receipt_refuses_a_path_in_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tid"):
        write_e_receipt(make_slip(tid="../../etc"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_e_receipt_link_only_for_web_addresses() -> None:
    assert "<a " not in render_e_receipt(make_slip(e_receipt_url="javascript:alert(1)"))
    assert "<a " not in render_e_receipt(make_slip())
