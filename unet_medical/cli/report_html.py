"""HTML pieces of the run report (cli/report.py): line charts as inline SVG, tables, embedded PNGs, the page.

Everything here is a pure function from numbers and strings to HTML text, so the page is
self-contained: no external CSS, JavaScript, fonts or image files (PNGs become base64 data URIs),
and it opens the same from a laptop, a mail attachment or a CI artefact without a network.
"""
from __future__ import annotations

import base64
import html
import math
from typing import Mapping, Sequence

# Line colours of the series of one chart, in order (colour-blind-safe Tableau 10 subset).
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
LEGEND_ROW = 15  # pixels per legend line under a chart

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px;
     border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eaf5e6; } tr.worst td { background: #fbe9e9; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 6px 0 12px 0; } figcaption { color: #555; font-size: 13px; }
img.panel { image-rendering: pixelated; border: 1px solid #ccc; width: 780px; max-width: 100%; }
table.kv td.num { text-align: left; }
.note { color: #666; font-size: 13px; }
"""


def escape(value: object) -> str:
    """Text (any value, via str) made safe inside HTML element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def png_data_uri(png: bytes) -> str:
    """A data: URI embedding PNG bytes, usable as an <img src>."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def format_value(value: object, digits: int = 4) -> str:
    """A table cell's text: floats to `digits` significant decimals, None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.3g}"
    return str(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]], row_classes: Sequence[str] | None = None,
               table_id: str | None = None, table_class: str | None = None) -> str:
    """<table> with one header row; numbers right-aligned (class "num"); `row_classes` per row (e.g. "best")."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="num">{escape(format_value(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{escape(format_value(c))}</td>" for c in row)
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    ident = f' id="{escape(table_id)}"' if table_id else ""
    ident += f' class="{escape(table_class)}"' if table_class else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def value_range(values: Sequence[float]) -> tuple[float, float]:
    """(low, high) of finite `values`, widened when they are all equal so the axis has a span."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if low == high:
        pad = abs(low) * 0.05 or 0.5
        return low - pad, high + pad
    return low, high


def scale_points(points: Sequence[tuple[float, float]], box: tuple[float, float, float, float],
                 x_range: tuple[float, float], y_range: tuple[float, float]) -> list[tuple[float, float]]:
    """Data (x, y) -> SVG pixel (px, py) inside box = (left, top, width, height).

    x_range / y_range map to the box's left..right and bottom..top edges (SVG's y grows downwards).
    Both ranges must have a non-zero span (value_range guarantees it).
    """
    left, top, width, height = box
    (x0, x1), (y0, y1) = x_range, y_range
    return [(left + (x - x0) / (x1 - x0) * width, top + (1.0 - (y - y0) / (y1 - y0)) * height) for x, y in points]


def ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round axis values inside [low, high]: the multiples of a 1, 2, 2.5 or 5 x 10^k step that gives
    at most about `target` of them (steps 100, 200, 300 rather than 82.5, 155, 227.5)."""
    raw = (high - low) / max(target - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-6))
    # Integer multiples of the step, not a running sum: no 0.30000000000000004 labels.
    return [k * step for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]


def svg_line_chart(series: Mapping[str, Mapping[int, float]], title: str, y_label: str, *, width: int = 560,
                   height: int = 240, chart_id: str | None = None) -> str:
    """An inline <svg> line chart of step -> value series sharing one x (step) axis.

    Each series is a polyline with its points marked when there are few; a legend under the x axis
    names them (the plot keeps `height` pixels; the legend adds LEGEND_ROW per series). Series
    without points are left out; with none at all the chart says "not logged".
    """
    drawn = {name: sorted(values.items()) for name, values in series.items() if values}
    margin_left, margin_right, margin_top, margin_bottom = 74, 16, 28, 40
    box = (margin_left, margin_top, width - margin_left - margin_right, height - margin_top - margin_bottom)
    height += LEGEND_ROW * len(drawn)
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg"{ident} class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
             f'<text x="{width / 2:.0f}" y="17" text-anchor="middle" font-size="13" font-weight="600">'
             f'{escape(title)}</text>']
    if not drawn:
        parts.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" fill="#888">'
                     "not logged</text></svg>")
        return "".join(parts)
    x_range = value_range([float(s) for pts in drawn.values() for s, _ in pts])
    y_range = value_range([float(v) for pts in drawn.values() for _, v in pts])
    left, top, w, h = box
    parts.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>')
    for y in ticks(*y_range):
        (_, py), = scale_points([(x_range[0], y)], box, x_range, y_range)
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" font-size="11">{y:.3g}</text>')
    for x in ticks(*x_range):
        (px, _), = scale_points([(x, y_range[0])], box, x_range, y_range)
        parts.append(f'<text x="{px:.1f}" y="{top + h + 15}" text-anchor="middle" font-size="11">{x:.4g}</text>')
    parts.append(f'<text x="{left + w / 2:.0f}" y="{top + h + 32}" text-anchor="middle" font-size="12">step</text>'
                 f'<text x="12" y="{top + h / 2:.0f}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 12 {top + h / 2:.0f})">{escape(y_label)}</text>')
    for i, (name, pts) in enumerate(drawn.items()):
        colour = PALETTE[i % len(PALETTE)]
        pixels = scale_points([(float(s), float(v)) for s, v in pts], box, x_range, y_range)
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in pixels)
        parts.append(f'<polyline class="series" data-name="{escape(name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.8" points="{coords}"/>')
        if len(pixels) <= 30:
            parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>' for px, py in pixels]
        legend_y = top + h + 40 + LEGEND_ROW * i
        parts.append(f'<rect x="{left}" y="{legend_y + 5}" width="14" height="3" fill="{colour}"/>'
                     f'<text x="{left + 20}" y="{legend_y + 10}" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def figure(img_src: str, caption: str, alt: str, img_id: str | None = None) -> str:
    """<figure> with an embedded image (a data URI) and its caption."""
    ident = f' id="{escape(img_id)}"' if img_id else ""
    return (f'<figure><img class="panel"{ident} src="{img_src}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def definition_table(pairs: Sequence[tuple[str, object]]) -> str:
    """Two-column table of (what, value) rows; values left-aligned, floats to 6 significant digits."""
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else v) for k, v in pairs]
    return html_table(("", "value"), rows, table_class="kv")


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole HTML document: inline CSS, a title, then each (heading, body HTML) section."""
    body = "".join(f"<section><h2>{escape(heading)}</h2>{content}</section>" for heading, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1><p class=\"sub\">{escape(subtitle)}</p>"
            f"{body}</body></html>\n")
