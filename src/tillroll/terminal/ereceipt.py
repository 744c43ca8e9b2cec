"""The e-receipt: the cardholder copy of a slip as one self-contained bilingual HTML file.

Issued when the printer fails (DESIGN F1) and whenever a customer asks for one. The content is the
cardholder copy's (:func:`tillroll.terminal.receipt.slip_fields`, so the card number is masked
and control characters are gone); every piece of text is HTML-escaped. The page loads nothing:
inline CSS only, and a Content-Security-Policy that forbids scripts and remote content.

The file is named ``<tid>-<batch>-<trace>.html`` (the natural key of the transaction), written
to a temporary file and renamed into place, so a reader never sees half a receipt and writing the
same receipt again replaces it.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from pathlib import Path

from tillroll.owner_only import private_dir
from tillroll.terminal.receipt import (
    SIGNATURE_LABEL,
    TITLE_EN,
    TITLE_ZH,
    Copy,
    Slip,
    clean_text,
    qr_url,
    slip_fields,
)

SELF_SERVICE_PATH = "/console/help"  # tillroll.console.selfservice, on the same back office
_KEY_RE = re.compile(r"^[A-Za-z0-9]{1,20}$")

_CSS = """
body { font-family: "PingFang SC", "Noto Sans CJK SC", "Microsoft YaHei", sans-serif;
       background: #f4f4f4; margin: 0; padding: 1rem; color: #111; }
main { max-width: 26rem; margin: 0 auto; background: #fff; padding: 1rem 1.25rem;
       border: 1px dashed #999; }
h1 { font-size: 1.25rem; text-align: center; margin: 0; }
p.sub { text-align: center; margin: 0.25rem 0; }
table { width: 100%; border-collapse: collapse; margin-top: 0.75rem; }
th { text-align: left; font-weight: normal; color: #555; padding: 0.2rem 0.5rem 0.2rem 0;
     vertical-align: top; white-space: nowrap; }
td { text-align: right; padding: 0.2rem 0; font-family: ui-monospace, monospace; word-break: break-all; }
tr.rule th, tr.rule td { border-top: 1px dashed #999; padding-top: 0.5rem; }
td.strong { font-weight: bold; }
td.large { font-size: 1.5rem; font-weight: bold; }
"""


def e_receipt_filename(slip: Slip) -> str:
    """``<tid>-<batch>-<trace>.html``; refuses keys that are not plain letters and digits."""
    for name, value in (("tid", slip.tid), ("batch", slip.batch), ("trace", slip.trace)):
        if not _KEY_RE.match(value):
            raise ValueError(f"{name} {value!r} cannot name an e-receipt file: letters and digits only")
    return f"{slip.tid}-{slip.batch}-{slip.trace}.html"


def render_e_receipt(slip: Slip, *, pdf_url: str | None = None, signature_url: str | None = None) -> str:
    """The HTML page (pure); the web app serves the same page with a link to its PDF and, when
    the cardholder signed on the cashier screen, the signature's image (same origin)."""
    e = html.escape
    rows = []
    for f in slip_fields(slip):
        row_class = ' class="rule"' if f.rule_before else ""
        cell_class = ' class="large"' if f.large else (' class="strong"' if f.bold else "")
        rows.append(f"<tr{row_class}><th>{e(f.label)}</th><td{cell_class}>{e(f.value)}</td></tr>")
    link = ""
    url = qr_url(slip)
    if url is not None and re.match(r"^https?://", url, re.IGNORECASE):
        link = f'<p class="sub"><a href="{e(url)}" rel="noopener noreferrer">电子凭证 E-RECEIPT</a></p>'
    if pdf_url is not None:
        link += f'<p class="sub"><a href="{e(pdf_url)}">下载 PDF / Download PDF</a></p>'
        # served by the back office: its customer self-service is one click away
        link += (
            f'<p class="sub"><a href="{e(SELF_SERVICE_PATH)}">'
            "扣款或退款有疑问？自助查询 / A question about a charge or refund? Self-service</a></p>"
        )
    signed = ""
    if signature_url is not None:
        signed = (
            f'<p class="sub">{e(SIGNATURE_LABEL)}</p>'
            f'<p class="sub"><img id="signature" src="{e(signature_url)}" alt="{e(SIGNATURE_LABEL)}" '
            'style="max-width:100%;height:auto;border-bottom:1px solid #999"></p>'
        )
    img_src = " img-src 'self';" if signature_url is not None else ""
    title = f"{TITLE_ZH} {TITLE_EN} · {clean_text(slip.merchant_name)} · {slip.trace}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="zh-CN">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta http-equiv="Content-Security-Policy" '
            f"content=\"default-src 'none';{img_src} style-src 'unsafe-inline'\">",
            f"<title>{e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            f"<h1>{e(TITLE_ZH)}</h1>",
            f'<p class="sub">{e(TITLE_EN)}</p>',
            f'<p class="sub">{e(Copy.CARDHOLDER.label)}</p>',
            "<table>",
            *rows,
            "</table>",
            signed,
            link,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


def write_e_receipt(slip: Slip, directory: Path) -> Path:
    """Write the e-receipt into ``directory`` (created if missing); returns the file's path."""
    target = directory / e_receipt_filename(slip)
    page = render_e_receipt(slip).encode("utf-8")
    private_dir(directory)
    # mkstemp creates the file 0600 and it stays so: a receipt is the merchant's data, not public
    fd, tmp_name = tempfile.mkstemp(prefix=".ereceipt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(page)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
