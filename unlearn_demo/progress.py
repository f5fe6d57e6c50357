"""The main job's live progress on the terminal: phase, image or step, loss, and seconds left.

It reads what :meth:`unlearn_demo.headless.ComfyServer.run` passes on while ComfyUI works: the
websocket's ``executing`` and ``progress`` messages (which node runs, its sampler step) and the
server log's ``[Divergence Unlearn] step k/n loss ...`` lines (the websocket carries no loss).
ComfyUI picks the order of the nodes (usually the erasure first, then each prompt's before and after
image), so the images are one phase whose count and time left cover both.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Callable, TextIO

STEP_LINE = re.compile(r"\[Divergence Unlearn\] step (\d+)/(\d+) loss (\S+)")
IMAGE_NODE = re.compile(r"(before|after)(\d+)(?:_decode|_save)?")
PHASES = {"unlearn": "erasure", "report": "Erasure Report", "save": "Save Erasure"}
IMAGES = "images"


def phase_of(node: str) -> str | None:
    """The job phase of a graph node id (``before3``, ``after3_decode`` -> images, ``unlearn`` -> erasure), None
    for others."""
    return IMAGES if IMAGE_NODE.fullmatch(node) else PHASES.get(node)


def seconds_left(elapsed: float, done: float, total: float) -> float:
    """Time still needed at the rate so far: elapsed * (total - done) / done."""
    return elapsed * (total - done) / done if done > 0 else float("nan")


def _left(seconds: float) -> str:
    return f", ~{seconds:.0f} s left" if seconds == seconds else ""


class JobProgress:
    """Prints one line per phase change, per drawn image (before or after) and per logged training step."""

    def __init__(self, prompts: int, sample_steps: int, out: TextIO = sys.stdout,
                 clock: Callable[[], float] = time.monotonic):
        self.images, self.sample_steps, self.out, self.clock = 2 * prompts, sample_steps, out, clock  # before, after
        self.phase: str | None = None
        self.started: dict[str, float] = {}
        self.done: dict[str, int] = {}
        self.training_from: tuple[int, float] | None = None  # (step, time) of the first logged training step

    def say(self, text: str) -> None:
        print(f"[demo] {text}", file=self.out, flush=True)

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "executing" and data.get("node"):
            phase = phase_of(data["node"])
            if phase and phase != self.phase:
                self.phase = phase
                self.started.setdefault(phase, self.clock())
                self.say(f"{phase}: started")
        elif kind == "progress" and data.get("value") == data.get("max"):
            self._finished_bar(data.get("node") or "", data["max"])
        elif kind == "log":
            match = STEP_LINE.search(data["line"])
            if match:
                self._training_step(int(match.group(1)), int(match.group(2)), match.group(3))

    def _finished_bar(self, node: str, steps: int) -> None:
        phase = phase_of(node)
        if phase == IMAGES:
            done = self.done[phase] = self.done.get(phase, 0) + 1
            elapsed = self.clock() - self.started[phase]
            when, prompt = IMAGE_NODE.fullmatch(node).groups()
            ran = (f"{steps} sampler steps" if steps == self.sample_steps else
                   f"ComfyUI's schedule ran {steps} sampler steps for the {self.sample_steps} asked")
            self.say(f"images: {done}/{self.images} drawn (prompt {int(prompt) + 1} {when}, {ran})"
                     f"{_left(seconds_left(elapsed, done, self.images))}")
        elif phase == "erasure" and self.training_from is None and "anchor images" not in self.done:
            self.done["anchor images"] = 1  # the node's first bar; the next one is training's, whose steps the log gives
            self.say(f"erasure: anchor images drawn ({steps} sampler steps); training")

    def _training_step(self, step: int, total: int, loss: str) -> None:
        now = self.clock()
        if self.training_from is None:
            self.training_from = (step, now)
        first, since = self.training_from
        # steps is a cap that erase_until usually ends the erasure before; checks and the end's work add to it
        left = seconds_left(now - since, step - first, total - first)
        self.say(f"erasure: step {step}/{total}, loss {loss}"
                 + (f", ~{left:.0f} s at this pace to step {total} (erase_until usually stops sooner)"
                    if left == left and step < total else ""))
