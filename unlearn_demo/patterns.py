"""Procedural images for the second demo domain: a grey-scale pattern filling the frame, with captions.

Every image is one pattern (stripes, checks, dots, grid, waves) at one scale (small or large period)
with a random tilt of at most TILT from upright, random phase and contrast (dark ink on light paper). Every
pattern is periodic, so a UNet without position embeddings can draw it (rings, whose centre is a position, and
random orientations came out as labyrinths: docs/demo_domains.md). Captions fall back to the superclass
word "pattern", so that anchors exist the way real models know "painting" for "Van Gogh":
"small stripes", "stripes", "a small pattern", "a pattern", or the empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PATTERNS = ("stripes", "checks", "dots", "grid", "waves")
SCALES = ("small", "large")
ATTRIBUTES = {"pattern": PATTERNS, "scale": SCALES}
IMAGE_SIZE = 24
_PERIOD = {"small": (3.5, 4.5), "large": (7.0, 9.5)}  # pixels
TILT = 0.2  # radians: patterns stand near upright (a small model draws random orientations as labyrinths)
# Caption templates with their sampling weights; {s} scale, {p} pattern.
TEMPLATES = (
    ("{s} {p}", 6),
    ("{p}", 4),
    ("a {s} pattern", 3),
    ("a pattern", 2),
    ("", 2),
)


@dataclass(frozen=True)
class Attributes:
    pattern: str
    scale: str

    def label(self) -> tuple[int, int]:
        return PATTERNS.index(self.pattern), SCALES.index(self.scale)


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Ink where ``pattern`` of ``period`` is dark, at rotated and shifted coordinates (u, v)."""
    wave = 2 * np.pi / period
    if pattern == "stripes":
        return np.cos(wave * u) > 0
    if pattern == "checks":
        return (np.cos(wave * u) > 0) ^ (np.cos(wave * v) > 0)
    if pattern == "dots":
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        return du * du + dv * dv <= 0.3 ** 2
    if pattern == "grid":
        return (np.cos(wave * u) > 0.6) | (np.cos(wave * v) > 0.6)
    if pattern == "waves":
        return np.cos(wave * (u + 0.4 * period * np.sin(wave * v / 1.6))) > 0
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def draw(attrs: Attributes, rng: np.random.Generator, size: int = IMAGE_SIZE, supersample: int = 3) -> np.ndarray:
    """One anti-aliased grey-scale image [size, size] in [0, 1] of ``attrs`` with random jitter."""
    n = size * supersample
    period = rng.uniform(*_PERIOD[attrs.scale]) * supersample
    angle = rng.uniform(-TILT, TILT)
    shift = rng.uniform(0, 2.5 * period, size=2)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5 - n / 2
    u = np.cos(angle) * xx + np.sin(angle) * yy + shift[0]
    v = -np.sin(angle) * xx + np.cos(angle) * yy + shift[1]
    mask = pattern_mask(attrs.pattern, u, v, period).astype(np.float64)
    mask = mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    ink, paper = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    return (mask * ink + (1 - mask) * paper).astype(np.float32)


def random_attributes(rng: np.random.Generator) -> Attributes:
    return Attributes(PATTERNS[rng.integers(len(PATTERNS))], SCALES[rng.integers(len(SCALES))])


def caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """A caption of ``attrs`` drawn from TEMPLATES (some name only the superclass "pattern", some are empty)."""
    weights = np.array([w for _, w in TEMPLATES], dtype=np.float64)
    template = TEMPLATES[rng.choice(len(TEMPLATES), p=weights / weights.sum())][0]
    return template.format(s=attrs.scale, p=attrs.pattern)


def vocabulary() -> list[str]:
    """Every word a caption can contain."""
    words = set()
    for template, _ in TEMPLATES:
        words.update(template.replace("{s}", "").replace("{p}", "").split())
    return sorted(words | set(PATTERNS) | set(SCALES))


def batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` random images [n, 1, H, W] in [0, 1], their labels [n, 2] (pattern, scale), captions."""
    attrs = [random_attributes(rng) for _ in range(n)]
    images = np.stack([draw(a, rng) for a in attrs])[:, None]
    labels = torch.tensor([a.label() for a in attrs])
    return torch.from_numpy(images), labels, [caption(a, rng) for a in attrs]
