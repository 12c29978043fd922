"""A horizontal bar chart drawn with Pillow (matplotlib is not a dependency of the project)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH = 960
ROW = 34
LABEL_WIDTH = 380
MARGIN = 16
COLOURS = ((90, 110, 140), (46, 125, 160), (230, 140, 40), (110, 160, 80))


def bar_chart(title: str, bars: Sequence[tuple[str, float, int]], unit: str, path: Path) -> None:
    """``bars``: (label, value, colour index); the longest bar spans the plot's width."""
    height = 2 * MARGIN + ROW * (len(bars) + 1)
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    top = max((value for _, value, _ in bars), default=0.0) or 1.0
    span = WIDTH - LABEL_WIDTH - 2 * MARGIN - 110
    for i, (label, value, colour) in enumerate(bars):
        y = MARGIN + ROW * (i + 1)
        # Pillow's built-in font has no "×".
        draw.text((MARGIN, y + 7), label.replace("×", "x"), fill="black", font=font)
        length = max(1, round(span * value / top))
        x0 = LABEL_WIDTH
        draw.rectangle((x0, y + 4, x0 + length, y + ROW - 6), fill=COLOURS[colour % len(COLOURS)])
        draw.text((x0 + length + 8, y + 7), f"{value:.1f} {unit}", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
