"""Small line and bar charts drawn with PIL (no plotting library needed inside ComfyUI)."""

from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
LABEL_WIDTH = 200  # pixels of the prompt column in comparison grids
HEADER_HEIGHT = 20  # pixels of the column-title row in comparison grids
LINE_HEIGHT = 12
DIVIDER_WIDTH = 4  # pixels of the bar between column groups in comparison grids


def line_chart(series: dict[str, list[float]], title: str, width: int = 640, height: int = 360,
               warning: str = "") -> Image.Image:
    """One panel per series (own y-range), sharing the x axis (step); ``warning`` in red under the title."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 4), title, fill="black")
    warned = textwrap.wrap(warning, width=(width - 20) // 6)
    for j, line in enumerate(warned):
        draw.text((10, 4 + LINE_HEIGHT * (j + 1)), line, fill=(200, 0, 0))
    head = 24 + LINE_HEIGHT * len(warned)
    panels = [(k, [v for v in vals if math.isfinite(v)]) for k, vals in series.items()]
    panel_h = (height - head) // max(1, len(panels))
    for i, (name, vals) in enumerate(panels):
        top = head + i * panel_h
        box = (50, top + 14, width - 10, top + panel_h - 8)
        draw.rectangle(box, outline=(180, 180, 180))
        if not vals:
            draw.text((box[0] + 4, box[1] + 4), f"{name}: no data", fill="black")
            continue
        lo, hi = min(vals), max(vals)
        span = hi - lo or abs(hi) or 1.0
        draw.text((box[0], top), f"{name}  [{lo:.3g} .. {hi:.3g}]", fill=COLOURS[i % len(COLOURS)])
        n = max(1, len(vals) - 1)
        points = [(box[0] + (box[2] - box[0]) * j / n, box[3] - (box[3] - box[1]) * (v - lo) / span)
                  for j, v in enumerate(vals)]
        if len(points) == 1:
            points.append(points[0])
        draw.line(points, fill=COLOURS[i % len(COLOURS)], width=2)
    return img


def bar_chart(bars: list[tuple[str, float]], title: str, width: int = 640, height: int = 360) -> Image.Image:
    """Horizontal bars for values in [0, 1] (shown as percentages; clipped to the range)."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 4), title, fill="black")
    row = (height - 30) // max(1, len(bars))
    for i, (label, value) in enumerate(bars):
        top = 26 + i * row
        frac = min(1.0, max(0.0, value))
        draw.text((10, top + 2), label[:40], fill="black")
        x0 = width // 2
        draw.rectangle((x0, top + 2, x0 + (width - x0 - 60) * frac, top + row - 4), fill=COLOURS[i % 2])
        draw.text((width - 55, top + 2), f"{100 * value:.1f}%", fill="black")
    return img


def comparison_grid(rows: list[tuple[str, list[Image.Image]]], headers: list[str], label_width: int | None = LABEL_WIDTH,
                    divider_after: int | None = None) -> Image.Image:
    """Rows of equally sized images, each labelled with its text on the left, under one title per column.

    ``label_width`` None fits the label column to the longest label line; ``divider_after`` = k draws a
    dark bar between the first k columns and the rest (e.g. before | after).
    """
    cell_w, cell_h = rows[0][1][0].size
    labels = [textwrap.wrap(label, width=30)[: max(1, cell_h // LINE_HEIGHT)] for label, _ in rows]
    if label_width is None:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_width = 12 + math.ceil(max(measure.textlength(line) for lines in labels for line in lines or [""]))
    gap = DIVIDER_WIDTH if divider_after is not None else 0

    def left(j: int) -> int:
        return label_width + j * cell_w + (gap if divider_after is not None and j >= divider_after else 0)

    img = Image.new("RGB", (left(len(headers)), HEADER_HEIGHT + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    if divider_after is not None:
        x = left(divider_after) - gap
        draw.rectangle((x, 0, x + gap - 1, img.height - 1), fill=(60, 60, 60))
    for j, header in enumerate(headers):
        draw.text((left(j) + 4, 4), header, fill="black")
    for i, ((_, images), lines) in enumerate(zip(rows, labels)):
        top = HEADER_HEIGHT + i * cell_h
        for k, line in enumerate(lines):
            draw.text((6, top + 4 + k * LINE_HEIGHT), line, fill="black")
        for j, image in enumerate(images):
            img.paste(image.convert("RGB"), (left(j), top))
    return img
