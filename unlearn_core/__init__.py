"""Divergence Unlearn engine: f-divergence concept erasure for text-to-image diffusion models.

Importable without ComfyUI. See README.md for the maths and the entry points.
"""

__version__ = "0.1.0"
