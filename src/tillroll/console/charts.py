"""Small server-rendered SVG charts (no script, no library): horizontal bars and hour columns.

Every text is escaped; sizes are computed in integers from the counts, so a chart is the same
bytes for the same data."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

BAR_H = 18
LABEL_W = 170
PLOT_W = 360


def bars(items: Sequence[tuple[str, int]], *, title: str, color: str = "#b5473a") -> Markup:
    """One horizontal bar per (label, count), longest first as given."""
    height = BAR_H * max(1, len(items)) + 28
    top = max([count for _, count in items] + [1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{LABEL_W + PLOT_W + 50}" '
        f'height="{height}" aria-label="{escape(title)}">',
        f'<text x="0" y="14" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i, (label, count) in enumerate(items):
        y = 22 + i * BAR_H
        w = max(1, count * PLOT_W // top) if count else 0
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{escape(label[:28])}</text>')
        parts.append(
            f'<rect class="bar" x="{LABEL_W}" y="{y + 2}" width="{w}" height="{BAR_H - 5}" fill="{color}">'
            f"<title>{escape(label)}: {count}</title></rect>"
        )
        parts.append(f'<text x="{LABEL_W + w + 4}" y="{y + 13}" font-size="12">{count}</text>')
    if not items:
        parts.append('<text x="0" y="38" font-size="12" fill="#666">—</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def hours(counts: Sequence[int], *, title: str, flagged: frozenset[int] = frozenset()) -> Markup:
    """24 columns, one per local hour; flagged hours (a spike) in red."""
    col_w, plot_h = 22, 120
    top = max([*counts, 1])
    width = 24 * col_w + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{plot_h + 50}" aria-label="{escape(title)}">',
        f'<text x="0" y="14" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for hour, count in enumerate(counts):
        h = count * plot_h // top if count else 0
        x = 10 + hour * col_w
        fill = "#b00020" if hour in flagged else "#4a78b5"
        parts.append(
            f'<rect class="hour" data-hour="{hour}" x="{x}" y="{24 + plot_h - h}" width="{col_w - 4}" '
            f'height="{h}" fill="{fill}"><title>{hour:02d}:00 {count}</title></rect>'
        )
        parts.append(f'<text x="{x}" y="{plot_h + 38}" font-size="10">{hour:02d}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
