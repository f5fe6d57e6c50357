"""Procedural images for the demo model: a coloured shape on a plain background, with captions.

Every image is one shape (circle, square, triangle, cross) in one colour (red, green, blue, yellow)
on a white or black background, with jittered size, position, rotation and tint. Captions name some
of the attributes and fall back to the superclass word "shape", so that anchors exist the way real
models know "painting" for "Van Gogh": "a red circle on a white background", "a red shape",
"a circle", "a shape", or the empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow")
BACKGROUNDS = ("white", "black")
ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "background": BACKGROUNDS}
IMAGE_SIZE = 64

_RGB = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
        "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05)}
# Caption templates with their sampling weights; {c} colour, {s} shape, {b} background.
TEMPLATES = (
    ("a {c} {s} on a {b} background", 6),
    ("a {c} {s}", 5),
    ("a {s}", 3),
    ("a {s} on a {b} background", 2),
    ("a {c} shape", 3),
    ("a {c} shape on a {b} background", 1),
    ("a shape on a {b} background", 1),
    ("a shape", 1),
    ("", 2),
)


@dataclass(frozen=True)
class Attributes:
    shape: str
    color: str
    background: str

    def label(self) -> tuple[int, int, int]:
        return SHAPES.index(self.shape), COLORS.index(self.color), BACKGROUNDS.index(self.background)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of ``shape`` with circumradius-like size ``r`` at coordinates (u, v) around its centre."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82 * r
    if shape == "triangle":  # equilateral, apex up (image v grows downwards); inradius = R/2
        big_r = 1.15 * r
        normals = [(0.0, 1.0), (np.cos(np.pi / 6), -0.5), (-np.cos(np.pi / 6), -0.5)]
        return np.all([u * nx + v * ny <= big_r / 2 for nx, ny in normals], axis=0)
    if shape == "cross":
        arm = 0.34 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw(attrs: Attributes, rng: np.random.Generator, size: int = IMAGE_SIZE, supersample: int = 3) -> np.ndarray:
    """One anti-aliased image [size, size, 3] in [0, 1] of ``attrs`` with random jitter."""
    n = size * supersample
    r = rng.uniform(0.2, 0.29) * n
    cx, cy = rng.uniform(0.5 * n - 0.14 * n, 0.5 * n + 0.14 * n, size=2)
    angle = rng.uniform(-0.3, 0.3)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    du, dv = xx - cx, yy - cy
    u = np.cos(angle) * du + np.sin(angle) * dv
    v = -np.sin(angle) * du + np.cos(angle) * dv
    mask = shape_mask(attrs.shape, u, v, r).astype(np.float64)
    mask = mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))[..., None]
    fg = np.clip(np.array(_RGB[attrs.color]) + rng.uniform(-0.07, 0.07, 3), 0, 1)
    bg = np.clip(np.array(_RGB[attrs.background]) + rng.uniform(-0.04, 0.04), 0, 1)
    return (mask * fg + (1 - mask) * bg).astype(np.float32)


def random_attributes(rng: np.random.Generator) -> Attributes:
    return Attributes(SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))],
                      BACKGROUNDS[rng.integers(len(BACKGROUNDS))])


def caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """A caption of ``attrs`` drawn from TEMPLATES (some name only the superclass "shape", some are empty)."""
    weights = np.array([w for _, w in TEMPLATES], dtype=np.float64)
    template = TEMPLATES[rng.choice(len(TEMPLATES), p=weights / weights.sum())][0]
    return template.format(c=attrs.color, s=attrs.shape, b=attrs.background)


def vocabulary() -> list[str]:
    """Every word a caption can contain."""
    words = set()
    for template, _ in TEMPLATES:
        words.update(template.replace("{c}", "").replace("{s}", "").replace("{b}", "").split())
    return sorted(words | set(SHAPES) | set(COLORS) | set(BACKGROUNDS))


def batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` random images [n, 3, H, W] in [0, 1], their labels [n, 3] (shape, colour, background), captions."""
    attrs = [random_attributes(rng) for _ in range(n)]
    images = np.stack([draw(a, rng) for a in attrs]).transpose(0, 3, 1, 2)
    labels = torch.tensor([a.label() for a in attrs])
    return torch.from_numpy(images), labels, [caption(a, rng) for a in attrs]
