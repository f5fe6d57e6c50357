"""What the test modules share: constants, small helper functions and classes (the fixtures are in conftest.py).
No test module imports another; each imports what it shares from here."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser
from unlearn_core.concepts import parse_concept_text
from unlearn_core.denoiser import Denoiser
from unlearn_core.erasure import Erasure
from unlearn_core.injection import DeltaInjection
from unlearn_core.samples import build_pool
from unlearn_demo.assemble import CHECKPOINT_NAME
from unlearn_demo.headless import LogTail

ROOT = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------- the diffusers trainer (test_trainer)


CONCEPTS = parse_concept_text("a red circle -> a red shape\nkeep: a blue square\nkeep: a green triangle")
QUICK = dict(resolution=64, num_samples=4, sample_steps=4, batch_size=2, erase_until=0,
             max_keep_drift=0)  # exactly `steps` steps, no probes


# -------------------------------------------------------------------------------- diffusers export (test_export)


PROMPTS = ["a red circle", "a blue square"]


def probe(denoiser):
    """Fixed (x_t, t, conditioning) at which predictions are compared."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([100, 700]), denoiser.encode_prompts(PROMPTS, (64, 64))


@torch.no_grad()
def erased_prediction(denoiser, erasure: Erasure):
    """The UNet output with W0 + delta substituted in memory (as the report measures it)."""
    params = dict(denoiser.net.named_parameters())
    weights = {"net." + n: params[n] + d for n, d in erasure.deltas().items()}
    return functional_call(denoiser, weights, probe(denoiser))


@torch.no_grad()
def loaded_prediction(tiny_pipe, denoiser, state):
    """The UNet output of a fresh copy of the pipeline after ``load_lora_weights(state)``."""
    pytest.importorskip("peft")
    pipe = copy.deepcopy(tiny_pipe)
    pipe.load_lora_weights(state)
    return DiffusersDenoiser.from_pipeline(pipe)(*probe(denoiser))


def untrained(erasure: Erasure) -> list[str]:
    """The erasure's tensors whose update is zero or not finite: [] for a run that trained every tensor it chose."""
    return [n for n in erasure.names
            if not (torch.isfinite(d := erasure.delta(n)).all() and bool(d.abs().max() > 0))]


# ------------------------------------------------------------ the demo models (test_demo_erasure, test_demo_job)


SEEDS = (1000, 1001)


def shapes_seen(demo, prompts: list[str], erasure=None) -> list[str]:
    model, denoiser, clf = demo
    scale = 1.0 if erasure is not None else 0.0
    names = erasure.names if erasure is not None else []
    with DeltaInjection(denoiser.net, names, lambda n: scale * erasure.delta(n)):
        images = [model.generate(prompts, seed=seed, denoiser=denoiser) for seed in SEEDS]
        return [s for batch in images for s in clf.predict(batch)["shape"]]


def assert_the_demo_thresholds(s: dict) -> None:
    """The main job's bounds (the issue's): the circle seen before, gone after, colours and kept prompts kept."""
    assert s["target_recognised_before"] >= 80, s
    assert s["target_recognised_after"] <= 10, s
    assert abs(s["target_color_kept_after"] - s["target_color_kept_before"]) <= 5, s
    assert abs(s["kept_shape_after"] - s["kept_shape_before"]) <= 5, s
    assert abs(s["kept_color_after"] - s["kept_color_before"]) <= 5, s


# -------------------------------------------------------------------------- the analytic denoiser (test_sampler)


SHAPE = (3, 8, 8)


class AnalyticDenoiser(Denoiser):
    """The exact optimal denoiser of data = four fixed images in [-0.9, 0.9], plus a 1 % network error.

    E[x0 | x_t] = sum_k softmax_k(-|x_t - sqrt(abar) mu_k|^2 / (2 (1 - abar))) mu_k; the output is the eps or v
    that this x0 implies, plus 0.01 sin(3 x_t) (no trained network is exact; the sampler must not amplify it).
    """

    family = "analytic"
    key_format = "diffusers"
    latent_channels = SHAPE[0]

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.net = nn.Linear(1, 1)  # gives the denoiser a device and a dtype
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = prediction_type
        self.images = 0.9 * torch.sign(torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0)))

    def forward(self, x_t, timesteps, cond):
        a = self.alphas_cumprod[timesteps].double().view(-1, 1, 1, 1)
        x = x_t.double()
        dist = (x[:, None] - a.sqrt()[:, None] * self.images.double()[None]).flatten(2).square().sum(-1)
        weights = torch.softmax(-dist / (2 * (1 - a.view(-1, 1)).clamp_min(1e-12)), dim=1)
        x0 = torch.einsum("bk,kchw->bchw", weights, self.images.double())
        eps = torch.where(a < 1, (x - a.sqrt() * x0) / (1 - a).sqrt().clamp_min(1e-12), torch.zeros_like(x))
        out = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return (out + 0.01 * torch.sin(3 * x)).float()

    def encode_prompts(self, prompts, size):
        return {"context": torch.zeros(len(prompts), 1)}


def pool_of(denoiser: Denoiser, source: str = "anchor_samples", samples: int = 16, steps: int = 20):
    cond = denoiser.encode_prompts(["a"], (64, 64))
    return build_pool(source, denoiser, cond, denoiser.encode_prompts([""], (64, 64)), samples, SHAPE, steps,
                      guidance=1.0, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------- the nodes in-process (test_comfy_inprocess)


ALWAYS_WRITTEN_BY_V3 = ("multiselect", "multiline")  # V3 inputs write these flags even when False


def inputs_in_v1_form(input_types: dict) -> dict:
    """A node's required and optional inputs as ``{"section/name": (type or combo choices, options)}``, whether
    ``INPUT_TYPES`` came from ComfyUI's V3 layer (a combo as ``("COMBO", {"options": ...})``) or is V1."""
    out = {}
    for section in ("required", "optional"):
        for name, entry in input_types.get(section, {}).items():
            kind, options = entry[0], dict(entry[1] if len(entry) > 1 else {})
            if kind == "COMBO":
                kind = options.pop("options")
            for flag in ALWAYS_WRITTEN_BY_V3:
                if options.get(flag) is False:
                    del options[flag]
            out[f"{section}/{name}"] = (kind if isinstance(kind, list) else str(kind), options)
    return out


def load_concepts(pack_nodes, text):
    with torch.inference_mode():
        return pack_nodes["DivergenceUnlearnLoadConceptSet"].execute(text, "none", "none").args


def unlearn(pack_nodes, model, clip, concepts, **overrides):
    args = dict(divergence="hellinger", alpha=0.5, sigma=1.0, target_mode="anchor", guidance_eta=1.0, erase_from="",
                parameter_set="cross_attn_kv", lora_rank=0, steps=3, learning_rate=1e-3, batch_size=1,
                resolution=32, x_source="anchor_samples", anchor_samples=2, sample_steps=2,
                preservation_weight=1.0, precision="fp32", gradient_checkpointing=False, seed=0)
    args.update(overrides)
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return pack_nodes["DivergenceUnlearn"].execute(model, clip, concepts, **args).args


# ------------------------------------------------------------- the nodes on flow transformers (test_flow_models)


def concept_set(pack_nodes, text):
    with torch.inference_mode():
        return pack_nodes["DivergenceUnlearnLoadConceptSet"].execute(text, "none", "none").args[0]


def unlearn_from_text(pack_nodes, model, clip, text, **overrides):
    """The Divergence Unlearn node on the concept set written as ``text``, with quick settings for the flow
    models; returns the node's outputs."""
    concepts = concept_set(pack_nodes, text)
    args = dict(divergence="hellinger", alpha=0.5, sigma=0.0, target_mode="anchor", guidance_eta=1.0, erase_from="",
                parameter_set="cross_attn_kv", lora_rank=4, steps=8, learning_rate=3e-3, batch_size=2,
                resolution=64, x_source="anchor_samples", anchor_samples=2, sample_steps=4,
                preservation_weight=1.0, precision="auto", gradient_checkpointing=False, seed=0)
    args.update(overrides)
    with torch.inference_mode():
        return pack_nodes["DivergenceUnlearn"].execute(model, clip, concepts, **args).args


# --------------------------------------------------------------------------- a real ComfyUI server (test_server)


WORKFLOW_DIR = Path(__file__).resolve().parents[1] / "workflows" / "api"
ERASE_THEN_GENERATE = WORKFLOW_DIR / "erase_then_generate.json"
TINY = "tiny_sd15.safetensors"


def adapt_for_tiny(prompt: dict, erasure_file: str | None = None) -> dict:
    """Same graph on the tiny checkpoint with quick settings. The tiny checkpoint has no VAE, so each
    VAEDecode becomes a SaveLatent of its latent, the image nodes downstream of it are dropped, and a Robustness
    Probe gets no VAE."""
    prompt = copy.deepcopy(prompt)
    quick = {
        "CheckpointLoaderSimple": dict(ckpt_name=TINY),
        "DivergenceUnlearn": dict(steps=3, resolution=32, anchor_samples=1, sample_steps=2, batch_size=1,
                                  precision="fp32"),
        "DivergenceUnlearnErasureReport": dict(resolution=32, probes=1),
        "DivergenceUnlearnRobustnessProbe": dict(steps=2, images=1, batch_size=1, resolution=32, sample_steps=2),
        "DivergenceUnlearnApplyErasure": dict(erasure_file=erasure_file) if erasure_file else {},
        "EmptyLatentImage": dict(width=32, height=32),
        "KSampler": dict(steps=2),
    }
    for node in prompt.values():
        node["inputs"].update(quick.get(node["class_type"], {}))
        if node["class_type"] == "DivergenceUnlearnRobustnessProbe":
            node["inputs"].pop("vae", None)  # its preview images become the chart of its numbers
    if any(node["class_type"] == "UNETLoader" for node in prompt.values()):
        return on_the_flow_demo(prompt)
    dropped = {nid for nid, node in prompt.items() if node["class_type"] == "VAEDecode"}
    for nid in dropped:
        prompt[nid] = {"class_type": "SaveLatent",
                       "inputs": {"samples": prompt[nid]["inputs"]["samples"], "filename_prefix": f"tiny/latent_{nid}"}}
    while True:
        downstream = [nid for nid, node in prompt.items()
                      if any(isinstance(v, list) and v[0] in dropped for v in node["inputs"].values())]
        if not downstream:
            return prompt
        for nid in downstream:
            del prompt[nid]
        dropped = set(downstream)


# A Flux workflow's loaders -> (node, output) of the flow demo standing in: the demo's own node gives a Flux MODEL
# (ComfyUI's Flux model base, 64 px), the demo checkpoint its CLIP and VAE. No Flux weights can be downloaded here.
FLOW_DEMO_STAND_INS = {"UNETLoader": ("flow_demo", 0), "DualCLIPLoader": ("demo_ckpt", 1), "VAELoader": ("demo_ckpt", 2)}


def on_the_flow_demo(prompt: dict) -> dict:
    """A Flux workflow with its loaders replaced by the flow demo, at the demo's 64 pixels."""
    stand_in = {nid: FLOW_DEMO_STAND_INS[node["class_type"]] for nid, node in prompt.items()
                if node["class_type"] in FLOW_DEMO_STAND_INS}
    prompt = {nid: node for nid, node in prompt.items() if nid not in stand_in}
    prompt["flow_demo"] = {"class_type": "UnlearnDemoLoadFlowModel", "inputs": {}}
    prompt["demo_ckpt"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in stand_in:
                node["inputs"][name] = list(stand_in[value[0]])
        if node["class_type"] in ("DivergenceUnlearn", "DivergenceUnlearnErasureReport"):
            node["inputs"]["resolution"] = 64
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=64, height=64)
    return prompt


def wait_for_log_line(server, log: LogTail, text: str, timeout: float = 120.0) -> str:
    """The first line containing ``text`` that the server logs after where ``log`` stands; waits for it as the
    server writes its log (a TimeoutError, with the log's end, if none comes within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.new_lines():
            if text in line:
                return line
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {server.process.returncode}:\n{server.log()[-4000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"ComfyUI logged no line with {text!r} in {timeout:.0f} s:\n{server.log()[-4000:]}")


# ---------------------------------------------------------------------------- ComfyUI's frontend (test_frontend)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
APP = "(window.app || (window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app))"
READY = (f"() => {{ const app = {APP}; const types = window.LiteGraph && window.LiteGraph.registered_node_types;"
         " return !!(app && app.graph && app.canvas && types && types.KSampler && types.DivergenceUnlearn); }")


# ---------------------------------------------------------------- the quality benchmark (test_quality_benchmark)


SCRIPT = ROOT / "benchmarks" / "erasure_quality.py"


def _bench():
    spec = importlib.util.spec_from_file_location("erasure_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
