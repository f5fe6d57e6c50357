"""Draw ``docs/icon.png``, the registry icon: a red circle whose right half is erased to its outline.

    python docs/make_icon.py
"""

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 400  # the registry shows the icon square; drawn large, scaled down by the viewer


def icon() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (24, 26, 33))
    draw = ImageDraw.Draw(img)
    box = (70, 70, SIZE - 70, SIZE - 70)
    draw.ellipse(box, fill=(214, 39, 40))
    half = SIZE // 2
    draw.rectangle((half, 0, SIZE, SIZE), fill=(24, 26, 33))  # the erased half ...
    draw.arc(box, -90, 90, fill=(120, 120, 130), width=6)  # ... keeps only a faint outline
    draw.line((half, 40, half, SIZE - 40), fill=(235, 235, 235), width=8)  # before | after
    return img


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "icon.png"
    icon().save(out)
    print(out)
