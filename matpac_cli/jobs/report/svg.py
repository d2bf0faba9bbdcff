"""Plain SVG charts, written as text: a head's label distribution and the embedding map.

No plotting library: a report is one HTML file that opens offline, and a bar chart or a scatter
is a few lines of SVG. The colours of the map's points come from CSS classes (`h<head>c<colour>`)
so the page can colour the same points by another head's label without redrawing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#17becf"]
OTHER = "#c9c9c9"  # a label outside the head's ten most common, or none
BAR_LABELS = 20


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def label_bars(
    labels: Sequence[str], top1: dict[int, int], kept: dict[int, int], kept_name: str, limit: int = BAR_LABELS
) -> tuple[str, int]:
    """Horizontal bars, one per label, most files first: files whose kept labels include it
    (light) and files whose top-1 label it is (dark, drawn over it). Returns (svg, labels drawn)."""
    order = sorted(set(kept) | set(top1), key=lambda i: (-kept.get(i, 0), -top1.get(i, 0), labels[i]))[:limit]
    most = max([kept.get(i, 0) for i in order] + [1])
    left, bar, row = 150, 230, 17
    height = 22 + row * len(order)
    out = [
        f'<svg class="bars" viewBox="0 0 {left + bar + 70} {height}" width="{left + bar + 70}" '
        f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="12" class="key"><tspan class="k1">&#9632;</tspan> top-1 '
        f'<tspan class="k2">&#9632;</tspan> {_e(kept_name)}</text>',
    ]
    for n, i in enumerate(order):
        y = 20 + n * row
        k, t = kept.get(i, 0), top1.get(i, 0)
        out.append(
            f"<g><title>{_e(labels[i])}: top-1 of {t} file(s), {_e(kept_name)} in {k}</title>"
            f'<text x="{left - 6}" y="{y + 12}" class="lab">{_e(labels[i])}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{_num(bar * k / most)}" height="{row - 4}" class="b2"/>'
            f'<rect x="{left}" y="{y + 2}" width="{_num(bar * t / most)}" height="{row - 4}" class="b1"/>'
            f'<text x="{left + bar * k / most + 4:.1f}" y="{y + 12}" class="cnt">{t} / {k}</text></g>'
        )
    out.append("</svg>")
    return "".join(out), len(order)


def colour_classes(top_labels: Sequence[int | None]) -> tuple[list[int], list[int]]:
    """Colour index per point (0..9 for the ten most common labels, 10 for the rest), and the
    labels that got colours 0..9, most common first."""
    counts: dict[int, int] = {}
    for label in top_labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    common = sorted(counts, key=lambda i: (-counts[i], i))[: len(PALETTE)]
    colour = {label: c for c, label in enumerate(common)}
    return [colour.get(label, len(PALETTE)) if label is not None else len(PALETTE) for label in top_labels], common


def colour_css(heads: int) -> str:
    rules = []
    for h in range(heads):
        for c, value in enumerate(PALETTE + [OTHER]):
            rules.append(f'#map[data-h="{h}"] .h{h}c{c}{{fill:{value}}}')
    return "\n".join(rules)


def scatter(
    xy: np.ndarray,
    ids: Sequence[int],
    titles: Sequence[str],
    classes: Sequence[Sequence[int]],
    axes: tuple[str, str],
    width: int = 900,
    height: int = 560,
) -> str:
    """Points `xy` (n, 2) scaled into the frame; point j carries `data-i=ids[j]`, hover text
    `titles[j]` and the class `h<h>c<classes[h][j]>` for every head h."""
    pad = 40  # the outermost points sit inside the frame
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    lo, hi = (xy.min(axis=0), xy.max(axis=0)) if len(xy) else (np.zeros(2), np.ones(2))
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    px = pad + (xy[:, 0] - lo[0]) / span[0] * (width - 2 * pad)
    py = height - pad - (xy[:, 1] - lo[1]) / span[1] * (height - 2 * pad)
    out = [
        f'<svg id="map" data-h="0" viewBox="0 0 {width} {height + 20}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" class="frame"/>',
        f'<text x="{width / 2:.0f}" y="{height + 14}" class="axis">{_e(axes[0])}</text>',
        f'<text x="12" y="{height / 2:.0f}" class="axis" transform="rotate(-90 12 {height / 2:.0f})">'
        f"{_e(axes[1])}</text>",
    ]
    for j in range(len(xy)):
        cls = " ".join(f"h{h}c{col[j]}" for h, col in enumerate(classes))
        out.append(
            f'<circle cx="{px[j]:.1f}" cy="{py[j]:.1f}" r="3.5" class="{cls}" data-i="{ids[j]}">'
            f"<title>{_e(titles[j])}</title></circle>"
        )
    out.append("</svg>")
    return "\n".join(out)
