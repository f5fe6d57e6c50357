"""ComfyUI's MODEL and CLIP as an ``unlearn_core`` :class:`Denoiser`, plus the host-specific glue.

ComfyUI runs every node under ``torch.inference_mode()``: its weights and CLIP outputs are inference
tensors that autograd cannot save. So training works on a private view of the diffusion network made
outside inference mode: the same modules' structure, with ordinary tensors that share the host's
weight memory (its upstream LoRAs already applied, its dtype kept), so no weight is copied, and the
host's own model is only read. ComfyUI before 0.3.41 also adds in place inside its transformer
blocks, which breaks backward: :func:`training_compatible` swaps in an out-of-place block forward
for the duration of a run on such hosts only.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import re
import traceback
import uuid
from dataclasses import replace
from typing import Iterator

import torch
from torch import Tensor

import comfy.model_management as mm

from ..unlearn_core.architectures import architecture_of
from ..unlearn_core.denoiser import Conditioning, Denoiser
from ..unlearn_core.schedule import abar_from_flow_sigma, flow_coordinates
from ..unlearn_core.erasure import Erasure, fingerprint


def model_family(patcher) -> str:
    """The host's name for the model's family (SD15, SD20, SDXL, ...)."""
    return type(patcher.model.model_config).__name__


def model_sampling(patcher):
    """The MODEL's schedule object as the user's graph patched it (e.g. by ModelSamplingDiscrete: v, zsnr)."""
    if hasattr(patcher, "get_model_object"):  # ComfyUI from mid-2024
        return patcher.get_model_object("model_sampling")
    return patcher.object_patches.get("model_sampling", patcher.model.model_sampling)


FLOW_SAMPLINGS = ("ModelSamplingDiscreteFlow", "ModelSamplingFlux")  # rectified flow: x = (1 - s) x0 + s eps
FLUX_GUIDANCE = 3.5  # Flux-dev's distilled guidance when the graph sets none (ComfyUI's Flux.extra_conds, FluxGuidance)


def prediction_type(sampling) -> str | None:
    """'epsilon', 'v_prediction' (a discrete DDPM schedule whose timestep t has sigma ``sigmas[t]``) or 'flow'
    (a rectified-flow schedule predicting the velocity, as Flux and SD3 do); else None."""
    import comfy.model_sampling as ms

    denoised = type(sampling).calculate_denoised
    flows = tuple(getattr(ms, name) for name in FLOW_SAMPLINGS if hasattr(ms, name))
    if flows and isinstance(sampling, flows):
        return "flow" if denoised is ms.CONST.calculate_denoised else None
    if not isinstance(sampling, ms.ModelSamplingDiscrete):
        return None
    if not torch.equal(sampling.timestep(sampling.sigmas).long().cpu(), torch.arange(len(sampling.sigmas))):
        return None  # e.g. a distilled (LCM) schedule
    return {ms.EPS.calculate_denoised: "epsilon", ms.V_PREDICTION.calculate_denoised: "v_prediction"}.get(denoised)


def schedule_of(sampling, kind: str) -> tuple[Tensor, Tensor]:
    """(abar [T], the network's timestep input [T]) for each of the schedule's ``sigmas``, in DDPM terms."""
    sigmas = sampling.sigmas.detach().double().cpu()
    abar = abar_from_flow_sigma(sigmas) if kind == "flow" else 1.0 / (1.0 + sigmas**2)
    return abar.float(), sampling.timestep(sampling.sigmas.detach()).float().cpu()


class ComfyDenoiser(Denoiser):
    """A trainable view of a ComfyUI MODEL's diffusion network, with its schedule and CLIP."""

    key_format = "ldm"

    def __init__(self, patcher, clip):
        super().__init__()
        base = patcher.model
        sampling = model_sampling(patcher)
        kind = prediction_type(sampling)
        if kind is None:
            raise ValueError(f"this {model_family(patcher)} model samples with {type(sampling).__name__} "
                             f"({base.model_type.name}); Divergence Unlearn trains epsilon- and v-prediction UNets "
                             "on a discrete schedule (SD1.x, SD2.x, SDXL; ModelSamplingDiscrete eps or v_prediction, "
                             "zsnr allowed) and rectified-flow transformers (Flux, SD3; ModelSamplingFlux / "
                             "ModelSamplingSD3 allowed): remove or change the model-sampling node before it")
        if clip is None:
            raise ValueError("no CLIP is connected (this checkpoint has no text encoder): load one with a CLIP loader")
        self.family = model_family(patcher)
        self.prediction_type = kind
        self.alphas_cumprod, self._net_timesteps = schedule_of(sampling, kind)
        network = base.diffusion_model
        self.architecture = architecture_of([name for name, _ in network.named_parameters()]).name
        # the latent format's channels (Flux's network outputs 2x2 patches: 64) where the host states them
        self.latent_channels = getattr(base.latent_format, "latent_channels", network.out_channels)
        self.latent_downscale = getattr(base.latent_format, "spacial_downscale_ratio", 8)
        self.guidance_distilled = bool(getattr(getattr(network, "params", None), "guidance_embed", False))
        # a bound method, not the module: the host's model must not become a submodule of ours
        pooled_input = (getattr(base, "adm_channels", 0) or 0) > 0 or self.architecture != "unet"
        self._encode_adm = base.encode_adm if pooled_input else None
        self._compute_dtype = base.manual_cast_dtype or base.get_dtype()  # fp8 weights compute in bf16/fp16/fp32
        self.clip = clip
        mm.load_models_gpu([patcher])  # applies upstream patches (LoRAs, other erasures) to the live weights
        self.net = shared_weights_view(network)  # the host keeps its model loaded: one copy
        if self.architecture == "flux":
            copy_norm_inputs(self.net)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the host computes in (its manual-cast dtype where the weights are stored in another)."""
        return self._compute_dtype

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        t = self._net_timesteps.to(x_t.device)[timesteps]
        if self.prediction_type == "flow":  # the network's own coordinates: x_flow = scale * x_t
            scale = flow_coordinates(self.alphas_cumprod.to(x_t.device)[timesteps])[1]
            x_t = x_t * scale.view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
        extra = {k: cond[k] for k in ("y", "guidance") if k in cond}
        return self.net(x_t, t, context=cond["context"], **extra)

    def checkpoint_blocks(self) -> list[str]:
        if self.architecture != "unet":
            return super().checkpoint_blocks()
        # the host's UNet calls the layers inside each block one by one (forward_timestep_embed), never
        # the block's own forward: so the layers are what gradient checkpointing wraps
        blocks = ([f"input_blocks.{i}" for i in range(len(self.net.input_blocks))] + ["middle_block"]
                  + [f"output_blocks.{i}" for i in range(len(self.net.output_blocks))])
        return [f"{block}.{j}" for block in blocks for j in range(len(self.net.get_submodule(block)))]

    def encode_prompts(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        contexts, ys = [], []
        height, width = size
        for prompt in prompts:
            with torch.inference_mode():
                cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            with torch.inference_mode(False):
                cond, pooled = cond.clone(), pooled.clone() if pooled is not None else None
                contexts.append(cond)
                if self._encode_adm is not None:
                    y = self._encode_adm(pooled_output=pooled, width=width, height=height,
                                             crop_w=0, crop_h=0, target_width=width, target_height=height,
                                             device=cond.device, prompt_type="positive")
                    ys.append(y.clone())
        with torch.inference_mode(False):
            out = {"context": _equal_length_cat(contexts).to(self.device, self.dtype)}
            if ys:
                out["y"] = torch.cat(ys).to(self.device, self.dtype)
            if self.guidance_distilled:
                out["guidance"] = torch.full((len(prompts),), FLUX_GUIDANCE, device=self.device, dtype=torch.float32)
        return out

    def release(self) -> None:
        """Drop the view of the host's weights (training done or cancelled)."""
        self.net = None
        mm.soft_empty_cache()


def ordinary_alias(tensor: Tensor) -> Tensor:
    """An ordinary (non-inference) tensor viewing ``tensor``'s memory: autograd can save it, nothing is copied."""
    with torch.inference_mode(False):
        alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


def shared_weights_view(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s structure whose frozen parameters and buffers alias the original's memory."""
    memo = {}
    with torch.inference_mode(False):
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            alias = ordinary_alias(tensor.detach())
            memo[id(tensor)] = torch.nn.Parameter(alias, requires_grad=False) if isinstance(
                tensor, torch.nn.Parameter) else alias
        return copy.deepcopy(module, memo)


def copy_norm_inputs(net: torch.nn.Module) -> None:
    """Make each LayerNorm of ``net`` normalise a copy of its input.

    Flux's blocks add their residuals in place (``txt += ...``) into the tensor their LayerNorm saved for
    backward, which autograd refuses; on a copy the saved tensor stays as it was. ``net`` is the pack's
    private view, so the host's modules are untouched.
    """
    for module in net.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.register_forward_pre_hook(lambda _, args: (args[0].clone(), *args[1:]))


def _equal_length_cat(contexts: list[Tensor]) -> Tensor:
    """Concatenate [1, L_i, D] contexts, repeating each to the common multiple of the lengths (as ComfyUI does)."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])


# --------------------------------------------------------------------------- old-host compatibility


FIRST_OUT_OF_PLACE_HOST = (0, 3, 41)  # ComfyUI 520eb77b: transformer blocks stopped adding in place


def host_version() -> tuple[int, ...] | None:
    """This ComfyUI's version, or None before 0.3.10 (which has no ``comfyui_version`` module)."""
    try:
        import comfyui_version
    except ImportError:
        return None
    return tuple(int(part) for part in re.findall(r"\d+", comfyui_version.__version__)[:3])


def adds_in_place(version: tuple[int, ...] | None) -> bool:
    """Whether a host of this version adds in place inside its transformer blocks (which breaks backward)."""
    return version is None or version < FIRST_OUT_OF_PLACE_HOST


def _out_of_place_forward(self, x, context=None, transformer_options={}):
    """SD1.x/SDXL transformer block without in-place adds (for hosts before ComfyUI 0.3.41)."""
    x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
    x = self.attn2(self.norm2(x), context=context) + x
    return self.ff(self.norm3(x)) + x


@contextlib.contextmanager
def training_compatible():
    """Make backward work on this host for the duration of the block (a no-op on hosts >= 0.3.41)."""
    if not adds_in_place(host_version()):
        yield
        return
    from comfy.ldm.modules.attention import BasicTransformerBlock

    original = BasicTransformerBlock._forward
    BasicTransformerBlock._forward = _out_of_place_forward
    try:
        yield
    finally:
        BasicTransformerBlock._forward = original


@contextlib.contextmanager
def training_view(patcher, clip) -> Iterator[ComfyDenoiser]:
    """A trainable view of the host's model (its weights shared, never copied) for the duration of the block:
    the host's inference mode off, gradients on, backward made to work; released afterwards. On an error, Cancel
    too, the frames' tensors are freed first: the host keeps the error."""
    denoiser = ComfyDenoiser(patcher, clip)
    try:
        with torch.inference_mode(False), torch.enable_grad(), training_compatible():
            yield denoiser
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        denoiser.release()


# --------------------------------------------------------------------------- erasure <-> MODEL


def network_shapes(patcher) -> dict[str, tuple[int, ...]]:
    """Shapes of the diffusion network's tensors, by their name inside the network."""
    return {k: tuple(v.shape) for k, v in patcher.model.diffusion_model.state_dict().items()}


def in_host_names(patcher, erasure: Erasure) -> Erasure:
    """The erasure with its tensors named as this host's network names them.

    Erasures trained on a diffusers UNet are renamed through the host's own diffusers -> ldm key map
    (the one its stock LoRA loader uses), so they apply like the files the stock loader reads.
    """
    if erasure.metadata.key_format != "diffusers":
        return erasure
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(patcher.model.model_config.unet_config)
    rename = lambda name: mapping.get(name, name)  # noqa: E731  (unknown names fail the shape check)
    return Erasure(full={rename(n): t for n, t in erasure.full.items()},
                   lora={rename(n): f for n, f in erasure.lora.items()},
                   shapes={rename(n): s for n, s in erasure.shapes.items()},
                   metadata=replace(erasure.metadata, key_format="ldm"))


def warn_if_other_weights(patcher, erasure: Erasure) -> None:
    """Say so in the console when the model's tensors are not those the erasure was trained on."""
    weights = patcher.model.diffusion_model.state_dict()
    found = fingerprint({name: weights[name] for name in erasure.names})
    expected = erasure.metadata.fingerprint
    if expected and found != expected:
        print(f"[Divergence Unlearn] note: this model's weights differ from those the erasure was trained on "
              f"(fingerprint {found}, erasure {expected}): a fine-tune, or other LoRAs were applied first. "
              "The erasure is applied all the same.")


def fitted(patcher, erasure: Erasure) -> Erasure:
    """The erasure in this host's tensor names, checked against the model (names, shapes, family): what every node
    that uses an erasure on a MODEL starts from."""
    erasure = in_host_names(patcher, erasure)
    erasure.check_against(network_shapes(patcher), model_family(patcher))
    return erasure


def before_erasure(patcher, erasure: Erasure):
    """(The model as it was before ``erasure``, the erasure fitted to it): what the nodes that measure or attack an
    erasure start from. A MODEL that carries the erasure as weight patches (the output of Divergence Unlearn or Apply
    Erased UNet, at any strength) is taken back to the model before it; any other MODEL is taken as that model."""
    erasure = fitted(patcher, erasure)
    if not any("diffusion_model." + name in patcher.patches for name in erasure.names):
        return patcher, erasure  # the usual case, the original model: no update is computed to compare
    deltas = {"diffusion_model." + name: delta for name, delta in erasure.deltas().items()}

    def applies_it(key: str, patch: tuple) -> bool:  # a host patch entry: (strength, (delta,), strength_model, ...)
        value = patch[1]
        return (isinstance(value, tuple) and len(value) == 1 and torch.is_tensor(value[0])
                and value[0].shape == deltas[key].shape and torch.equal(value[0].float().cpu(), deltas[key].cpu()))

    carried = {key for key in deltas if any(applies_it(key, p) for p in patcher.patches.get(key, ()))}
    if not carried:
        return patcher, erasure
    if carried != set(deltas):
        raise ValueError(f"this MODEL carries {len(carried)} of the erasure's {len(deltas)} weight updates: connect "
                         "the model from before the erasure (the one given to Divergence Unlearn)")
    original = patcher.clone()
    for key in carried:
        original.patches[key] = [p for p in original.patches[key] if not applies_it(key, p)]
        if not original.patches[key]:
            del original.patches[key]
    original.patches_uuid = uuid.uuid4()  # the host re-patches its loaded weights when this changes
    print("[Divergence Unlearn] this MODEL carries the erasure: it is measured against the model before it")
    return original, erasure


def apply_erasure(patcher, erasure: Erasure, strength: float):
    """A clone of ``patcher`` with the erasure's deltas as weight patches (the input is untouched)."""
    erasure = fitted(patcher, erasure)
    warn_if_other_weights(patcher, erasure)
    out = patcher.clone()
    if strength != 0:
        patches = {"diffusion_model." + name: (delta,) for name, delta in erasure.deltas().items()}
        accepted = out.add_patches(patches, strength)
        if len(accepted) != len(patches):
            raise RuntimeError(f"ComfyUI accepted {len(accepted)} of {len(patches)} erasure tensors")
    return out
