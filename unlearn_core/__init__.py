"""Divergence Unlearn engine: f-divergence concept erasure for text-to-image diffusion models.

Importable without ComfyUI. The maths: docs/maths.md; the entry points: README.md.
"""

__version__ = "0.1.0"
