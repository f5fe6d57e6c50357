"""Training progress inside ComfyUI: a progress bar per phase, the loss in the console, the Cancel button
checked every step and, on hosts with the V3 API, the loss chart as a live preview on the node."""

from __future__ import annotations

import math

from PIL import Image

import comfy.model_management as mm
import comfy.utils

from ..unlearn_core.plot import line_chart
from ..unlearn_core.steps import StepInfo
from .host import HAS_V3_API


def loss_chart(history: list[StepInfo], title: str, warning: str = "") -> Image.Image:
    """The loss, S and gradient norm of the training steps so far, one panel each; ``warning`` in red."""
    return line_chart({"loss": [h.loss for h in history], "S (target vs frozen target)": [h.mean_s for h in history],
                       "gradient norm": [h.grad_norm for h in history],
                       "moved onto anchor (checks)": [h.moved for h in history]}, title, warning=warning)


class TrainingProgress:
    """The trainer's callback: ComfyUI's progress bar, console log, cancellation and, on V3 hosts, the loss
    chart every ``preview_every`` logged steps as the bar's preview image.

    ComfyUI's progress hook hands the preview to the V3 progress registry, which shows it on the running
    node (``comfy_api``'s ``execution.set_progress`` does the same, but fails in ComfyUI 0.3.64: its
    ``execution`` attribute is never created).
    """

    def __init__(self, title: str, log_every: int = 10, preview_every: int = 10):
        self.title = title
        self.log_every = log_every
        self.preview_every = preview_every
        self.bars: dict[str, comfy.utils.ProgressBar] = {}
        self.history: list[StepInfo] = []

    def __call__(self, info: StepInfo) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar = self.bars.setdefault(info.phase, comfy.utils.ProgressBar(info.total))
        preview = None
        if info.phase == "training":
            self.history.append(info)
            if info.step % self.log_every == 0 or info.step in (1, info.total):
                keep = f" keep S {info.keep_s:.3g}" if math.isfinite(info.keep_s) else ""
                print(f"[Divergence Unlearn] step {info.step}/{info.total} loss {info.loss:.5g} "
                      f"S {info.mean_s:.3g} (sigma {info.sigma:.3g}, r = S/sigma² {info.ratio:.3g}){keep} "
                      f"|grad| {info.grad_norm:.3g}")
            if math.isfinite(info.erased):
                print(f"[Divergence Unlearn] {info.check_text()}")
            if HAS_V3_API and (len(self.history) % self.preview_every == 0 or info.step == info.total):
                preview = ("PNG", loss_chart(self.history, f"{self.title}, step {info.step}/{info.total}"), None)
        if info.phase == "attack" and (info.step % self.log_every == 0 or info.step in (1, info.total)):
            print(f"[Divergence Unlearn] attack step {info.step}/{info.total} loss {info.loss:.5g}")
        bar.update_absolute(info.step, info.total, preview)
