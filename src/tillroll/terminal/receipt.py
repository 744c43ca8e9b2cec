"""The sales slip (签购单), laid out as lines for a 58 mm or 80 mm ESC/POS printer (RECEIPT.md).

Everything here is pure: :func:`render_slip` turns a :class:`Slip` (built from the journal entry
of a MAC-verified approval) into :class:`SlipLine` objects that a printer adapter sends as
ESC/POS, and :func:`slip_text` turns them into the plain text a cashier would read on the paper.

Columns: a line holds ``width_cols`` columns (32 on 58 mm paper, 48 on 80 mm). ASCII takes one
column; a character that is wide, full-width or East-Asian-ambiguous (``unicodedata
.east_asian_width`` W, F or A) takes two, since a Chinese printer in GB18030 mode prints every
double-byte character as a full-width glyph. Combining marks take none.

Card data: the card number is masked again here (:func:`tillroll.pan.mask_pan` keeps an already
masked number unchanged), so a full PAN handed in by mistake is never printed. Control and format
characters in any field are removed, so data can never smuggle printer commands onto the wire.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from tillroll.money import format_yuan
from tillroll.pan import mask_pan

MIN_WIDTH_COLS = 32
MAX_WIDTH_COLS = 64
ENTRY_MODES = frozenset({"S", "I", "C", "M"})
MAX_QR_URL_LEN = 512  # longer addresses make a QR code too dense for 58 mm paper; then none is printed

TITLE_ZH = "POS签购单"
TITLE_EN = "POS SALES SLIP"
REPRINT_MARK = "重打印 REPRINT"
SIGNATURE_LABEL = "持卡人签名 CARDHOLDER SIGNATURE"
CONSENT_ZH = "本人确认以上交易，同意将其记入本卡账户"
CONSENT_EN = "I ACKNOWLEDGE SATISFACTORY RECEIPT OF RELATIVE GOODS/SERVICES"
E_RECEIPT_LABEL = "电子凭证 E-RECEIPT"
QR_TEXT_PREFIX = "[QR] "


class TransType(enum.StrEnum):
    """The transaction type; the value is the English label, ``.zh`` the Chinese one."""

    SALE = "SALE"
    VOID = "VOID"
    REFUND = "REFUND"
    QR_PAY = "QR PAY"

    @property
    def zh(self) -> str:
        return _TRANS_ZH[self]

    @property
    def label(self) -> str:
        """'消费 SALE'."""
        return f"{self.zh} {self.value}"

    @property
    def is_money_back(self) -> bool:
        """A void or refund: its amount prints with a minus sign."""
        return self in (TransType.VOID, TransType.REFUND)


_TRANS_ZH: dict[TransType, str] = {
    TransType.SALE: "消费",
    TransType.VOID: "消费撤销",
    TransType.REFUND: "退货",
    TransType.QR_PAY: "扫码支付",
}


class Copy(enum.Enum):
    MERCHANT = "merchant"
    CARDHOLDER = "cardholder"

    @property
    def label(self) -> str:
        """'商户存根 MERCHANT COPY' / '持卡人存根 CARDHOLDER COPY'."""
        if self is Copy.MERCHANT:
            return "商户存根 MERCHANT COPY"
        return "持卡人存根 CARDHOLDER COPY"


class Align(enum.StrEnum):
    """Values match python-escpos ``set(align=...)``."""

    LEFT = "left"
    CENTER = "center"
    RIGHT = "right"


@dataclass(frozen=True)
class Slip:
    merchant_name: str
    mid: str
    tid: str
    operator: str
    pan_masked: str  # already masked by tillroll.pan.mask_pan (first 6, last 4); '' for QR pay
    entry_mode: str  # 'S' swipe, 'I' chip, 'C' contactless, 'M' manual; '' for QR pay
    issuer: str
    acquirer: str
    expiry_yymm: str | None
    trans_type: TransType
    batch: str  # n6
    trace: str  # n6
    auth_code: str  # an6
    rrn: str  # an12
    when: datetime  # the merchant's local wall-clock time (naive); the journal keeps UTC instants
    amount_minor: int  # positive fen; VOID/REFUND print with a minus sign
    currency: str = "156"
    reference: str | None = None  # e.g. "原凭证号 ORIG VOUCHER 000123 RRN ..." for voids/refunds
    e_receipt_url: str | None = None  # printed as a QR code when present

    def __post_init__(self) -> None:
        object.__setattr__(self, "trans_type", TransType(self.trans_type))
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError(f"amount_minor must be an int of fen, not {type(self.amount_minor).__name__}")
        if self.amount_minor < 0:
            raise ValueError(
                f"amount_minor {self.amount_minor} is negative: pass the positive amount in fen; "
                "a void or refund gets its minus sign from trans_type"
            )
        if self.entry_mode and self.entry_mode not in ENTRY_MODES:
            raise ValueError(f"entry_mode {self.entry_mode!r} is not one of S, I, C, M")

    @property
    def signed_amount_minor(self) -> int:
        """The amount as printed: negative for a void or refund."""
        return -self.amount_minor if self.trans_type.is_money_back else self.amount_minor


@dataclass(frozen=True)
class SlipLine:
    """One printed line. ``text`` is unpadded; ``align`` says where it sits.

    A QR line (``is_qr``) carries the QR code's content in ``text``, not text to print.
    """

    text: str
    bold: bool = False
    double_height: bool = False
    align: Align = Align.LEFT
    is_qr: bool = False
    # The blank space a cardholder signs in (merchant copy): a printer with the customer's
    # electronic signature prints its image there instead (printer.py, signature_print.py).
    signature_space: bool = False


@dataclass(frozen=True)
class SlipField:
    """One labelled value of the slip, shared by the paper layout and the e-receipt."""

    key: str
    label: str  # '商户名称 MERCHANT NAME'
    value: str
    bold: bool = False
    large: bool = False  # double height on paper
    rule_before: bool = False  # a dashed rule separates it from the previous section


# ---------------------------------------------------------------------------------------------
# columns


def char_cols(ch: str) -> int:
    """Columns one character takes on a Chinese ESC/POS printer in GB18030 mode."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F", "A") else 1


def display_width(text: str) -> int:
    return sum(char_cols(ch) for ch in text)


def pad_line(text: str, align: Align, width_cols: int) -> str:
    """Left-pad ``text`` so it sits at ``align`` on a ``width_cols`` line (never pads past it)."""
    free = width_cols - display_width(text)
    if free <= 0 or align is Align.LEFT:
        return text
    if align is Align.CENTER:
        return " " * (free // 2) + text
    return " " * free + text


def _split_cols(text: str, cols: int) -> tuple[str, str]:
    """The longest head of ``text`` within ``cols`` columns (at least one character), and the rest."""
    used = 0
    for i, ch in enumerate(text):
        w = char_cols(ch)
        if used + w > cols and i > 0:
            return text[:i], text[i:]
        used += w
    return text, ""


_TOKEN_RE = re.compile(r" +|[\x21-\x7e]+|.", re.DOTALL)


def wrap_cols(text: str, width_cols: int) -> list[str]:
    """Wrap at spaces (English) or between characters (Chinese) to ``width_cols`` columns."""
    lines: list[str] = []
    cur = ""
    used = 0
    for tok in _TOKEN_RE.findall(text):
        if tok[0] == " ":
            if used and used < width_cols:
                cur += " "
                used += 1
            continue
        tw = display_width(tok)
        if used + tw > width_cols:
            if cur.strip():
                lines.append(cur.rstrip())
            cur, used = "", 0
            while tw > width_cols:
                head, tok = _split_cols(tok, width_cols)
                lines.append(head)
                tw = display_width(tok)
        cur += tok
        used += tw
    if cur.strip() or not lines:
        lines.append(cur.rstrip())
    return lines


# ---------------------------------------------------------------------------------------------
# content

_DROP_CATEGORIES = frozenset({"Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def clean_text(text: str) -> str:
    """Control characters become spaces, format/invisible ones are dropped, ends are stripped."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            out.append(" ")
        elif cat not in _DROP_CATEGORIES:
            out.append(ch)
    return "".join(out).strip()


def format_expiry(expiry_yymm: str) -> str:
    """'2812' -> '2028/12'; anything that is not YYMM is printed as given."""
    e = expiry_yymm.strip()
    if len(e) == 4 and e.isdigit():
        return f"20{e[:2]}/{e[2:]}"
    return clean_text(e)


def format_when(when: datetime) -> str:
    return when.strftime("%Y/%m/%d %H:%M:%S")


_CURRENCY_LABELS = {"156": "RMB"}


def format_amount(slip: Slip) -> str:
    """'RMB 12.50'; 'RMB -12.50' for a void or refund."""
    label = _CURRENCY_LABELS.get(slip.currency, clean_text(slip.currency))
    return f"{label} {format_yuan(slip.signed_amount_minor)}"


def safe_pan(pan_masked: str) -> str:
    """The card number as printed: masked again, so a full PAN can never reach paper."""
    digits_and_stars = "".join(ch for ch in pan_masked if not ch.isspace())
    return mask_pan(clean_text(digits_and_stars)) if digits_and_stars else ""


def slip_fields(slip: Slip) -> list[SlipField]:
    """The labelled values of a slip, in RECEIPT.md order (both copies carry the same ones)."""
    fields = [
        SlipField("merchant_name", "商户名称 MERCHANT NAME", clean_text(slip.merchant_name)),
        SlipField("mid", "商户编号 MERCHANT NO.", clean_text(slip.mid)),
        SlipField("tid", "终端编号 TERMINAL NO.", clean_text(slip.tid)),
        SlipField("operator", "操作员号 OPERATOR NO.", clean_text(slip.operator)),
    ]
    card: list[SlipField] = []
    pan = safe_pan(slip.pan_masked)
    if pan:
        card.append(SlipField("card_no", "卡号 CARD NO.", f"{pan} {slip.entry_mode}".rstrip(), bold=True))
    if clean_text(slip.issuer):
        card.append(SlipField("issuer", "发卡行 ISSUER", clean_text(slip.issuer)))
    if clean_text(slip.acquirer):
        card.append(SlipField("acquirer", "收单行 ACQUIRER", clean_text(slip.acquirer)))
    if slip.expiry_yymm and slip.expiry_yymm.strip():
        card.append(SlipField("expiry", "有效期 EXP DATE", format_expiry(slip.expiry_yymm)))
    type_field = SlipField("trans_type", "交易类型 TRANS TYPE", slip.trans_type.label, bold=True)
    if card:
        card[0] = _with_rule(card[0])
    else:
        type_field = _with_rule(type_field)
    fields += card
    fields.append(type_field)
    fields.append(SlipField("batch", "批次号 BATCH NO.", clean_text(slip.batch)))
    fields.append(SlipField("trace", "凭证号 VOUCHER NO.", clean_text(slip.trace)))
    if clean_text(slip.auth_code):
        fields.append(SlipField("auth_code", "授权码 AUTH NO.", clean_text(slip.auth_code)))
    fields.append(SlipField("rrn", "参考号 REFER NO.", clean_text(slip.rrn)))
    fields.append(SlipField("when", "日期/时间 DATE/TIME", format_when(slip.when)))
    fields.append(
        SlipField("amount", "金额 AMOUNT", format_amount(slip), bold=True, large=True, rule_before=True)
    )
    if slip.reference and clean_text(slip.reference):
        fields.append(SlipField("reference", "备注 REFERENCE", clean_text(slip.reference)))
    return fields


def _with_rule(f: SlipField) -> SlipField:
    return SlipField(f.key, f.label, f.value, bold=f.bold, large=f.large, rule_before=True)


def qr_url(slip: Slip) -> str | None:
    """The e-receipt address to print as a QR code, if there is one that fits a QR code."""
    if slip.e_receipt_url is None:
        return None
    url = clean_text(slip.e_receipt_url)
    if not url or len(url) > MAX_QR_URL_LEN:
        return None
    return url


# ---------------------------------------------------------------------------------------------
# layout


def _check_width(width_cols: int) -> None:
    if not MIN_WIDTH_COLS <= width_cols <= MAX_WIDTH_COLS:
        raise ValueError(
            f"width_cols {width_cols} is not a receipt width: use 32 (58 mm paper) or 48 (80 mm paper)"
        )


def _centered(
    text: str, width_cols: int, *, bold: bool = False, double_height: bool = False
) -> list[SlipLine]:
    return [
        SlipLine(part, bold=bold, double_height=double_height, align=Align.CENTER)
        for part in wrap_cols(text, width_cols)
    ]


def _wrapped(
    text: str, width_cols: int, *, bold: bool = False, double_height: bool = False
) -> list[SlipLine]:
    return [SlipLine(part, bold=bold, double_height=double_height) for part in wrap_cols(text, width_cols)]


def _field_lines(f: SlipField, width_cols: int) -> list[SlipLine]:
    label = f"{f.label}:"
    if not f.large and display_width(label) + 1 + display_width(f.value) <= width_cols:
        gap = width_cols - display_width(label) - display_width(f.value)
        return [SlipLine(label + " " * gap + f.value, bold=f.bold)]
    return _wrapped(label, width_cols) + _wrapped(f.value, width_cols, bold=f.bold, double_height=f.large)


def render_slip(slip: Slip, copy: Copy, *, reprint: bool = False, width_cols: int = 32) -> list[SlipLine]:
    """The slip as printed lines (RECEIPT.md): pure, no line wider than ``width_cols``."""
    _check_width(width_cols)
    rule = SlipLine("-" * width_cols)
    lines: list[SlipLine] = []
    lines += _centered(TITLE_ZH, width_cols, bold=True, double_height=True)
    lines += _centered(TITLE_EN, width_cols, bold=True)
    if reprint:
        lines += _centered(REPRINT_MARK, width_cols, bold=True)
    lines += _centered(copy.label, width_cols)
    lines.append(rule)
    for f in slip_fields(slip):
        if f.rule_before:
            lines.append(rule)
        lines += _field_lines(f, width_cols)
    lines.append(rule)
    if copy is Copy.MERCHANT:
        lines += _wrapped(f"{SIGNATURE_LABEL}:", width_cols)
        lines += [SlipLine("", signature_space=True), SlipLine("", signature_space=True)]
        lines.append(SlipLine("_" * width_cols))
        lines += _wrapped(CONSENT_ZH, width_cols)
        lines += _wrapped(CONSENT_EN, width_cols)
    url = qr_url(slip)
    if url is not None:
        if copy is Copy.MERCHANT:
            lines.append(rule)
        lines += _centered(E_RECEIPT_LABEL, width_cols)
        lines.append(SlipLine(url, align=Align.CENTER, is_qr=True))
    return lines


def line_text(line: SlipLine, width_cols: int) -> str:
    """How one line reads on paper (a QR code shows as ``[QR] <content>``)."""
    text = QR_TEXT_PREFIX + line.text if line.is_qr else line.text
    return pad_line(text, line.align, width_cols).rstrip()


def lines_text(lines: list[SlipLine], width_cols: int) -> str:
    return "\n".join(line_text(line, width_cols) for line in lines)


def slip_text(slip: Slip, copy: Copy, *, reprint: bool = False, width_cols: int = 32) -> str:
    """Plain text of :func:`render_slip`, for tests and logs."""
    return lines_text(render_slip(slip, copy, reprint=reprint, width_cols=width_cols), width_cols)
