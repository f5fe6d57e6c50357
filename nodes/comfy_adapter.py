"""ComfyUI's MODEL and CLIP as an ``unlearn_core`` :class:`Denoiser`, plus the host-specific glue.

ComfyUI runs every node under ``torch.inference_mode()``: its weights and CLIP outputs are inference
tensors that autograd cannot save. So training works on a private copy of the diffusion network made
outside inference mode (ordinary tensors, the host's upstream LoRAs already applied), and the
host's own model is only read. ComfyUI before 0.3.41 also adds in place inside its transformer
blocks, which breaks backward: :func:`training_compatible` swaps in an out-of-place block forward
for the duration of a run on such hosts only.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import Tensor

import comfy.model_management as mm

from ..unlearn_core.denoiser import Conditioning, Denoiser
from ..unlearn_core.erasure import Erasure, fingerprint
from ..unlearn_core.injection import DeltaInjection


def model_family(patcher) -> str:
    """The host's name for the model's family (SD15, SD20, SDXL, ...)."""
    return type(patcher.model.model_config).__name__


def model_sampling(patcher):
    """The MODEL's schedule object as the user's graph patched it (e.g. by ModelSamplingDiscrete: v, zsnr)."""
    if hasattr(patcher, "get_model_object"):  # ComfyUI from mid-2024
        return patcher.get_model_object("model_sampling")
    return patcher.object_patches.get("model_sampling", patcher.model.model_sampling)


def prediction_type(sampling) -> str | None:
    """'epsilon' or 'v_prediction' for a discrete DDPM schedule whose timestep t has sigma ``sigmas[t]``; else None."""
    import comfy.model_sampling as ms

    if not isinstance(sampling, ms.ModelSamplingDiscrete):
        return None
    if not torch.equal(sampling.timestep(sampling.sigmas).long().cpu(), torch.arange(len(sampling.sigmas))):
        return None  # e.g. a distilled (LCM) schedule
    denoised = type(sampling).calculate_denoised
    return {ms.EPS.calculate_denoised: "epsilon", ms.V_PREDICTION.calculate_denoised: "v_prediction"}.get(denoised)


class ComfyDenoiser(Denoiser):
    """A trainable copy of a ComfyUI MODEL's diffusion network, with its schedule and CLIP."""

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
                             "zsnr allowed): remove or change the model-sampling node before it")
        if clip is None:
            raise ValueError("no CLIP is connected (this checkpoint has no text encoder): load one with a CLIP loader")
        self.family = model_family(patcher)
        self.prediction_type = kind
        sigmas = sampling.sigmas.detach().double().cpu()
        self.alphas_cumprod = (1.0 / (1.0 + sigmas**2)).float()
        self.latent_channels = base.diffusion_model.out_channels
        # a bound method, not the module: the host's model must not become a submodule of ours
        self._encode_adm = base.encode_adm if (getattr(base, "adm_channels", 0) or 0) > 0 else None
        self.clip = clip
        device = mm.get_torch_device()
        mm.load_models_gpu([patcher])  # applies upstream patches (LoRAs, other erasures) to the live weights
        with torch.inference_mode(False), torch.enable_grad():
            self.net = copy.deepcopy(base.diffusion_model).to(device)
        self.net.requires_grad_(False)
        mm.unload_all_models()  # training needs the memory; the host reloads its model when it samples

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        extra = {"y": cond["y"]} if "y" in cond else {}
        return self.net(x_t, timesteps.float(), context=cond["context"], **extra)

    def checkpoint_blocks(self) -> list[str]:
        return ([f"input_blocks.{i}" for i in range(len(self.net.input_blocks))] + ["middle_block"]
                + [f"output_blocks.{i}" for i in range(len(self.net.output_blocks))])

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
        return out

    def release(self) -> None:
        """Free the private copy (training done or cancelled)."""
        self.net = None
        mm.soft_empty_cache()


def _equal_length_cat(contexts: list[Tensor]) -> Tensor:
    """Concatenate [1, L_i, D] contexts, repeating each to the common multiple of the lengths (as ComfyUI does)."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])


# --------------------------------------------------------------------------- old-host compatibility


def _out_of_place_forward(self, x, context=None, transformer_options={}):
    """SD1.x/SDXL transformer block without in-place adds (for hosts before ComfyUI 0.3.41)."""
    x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
    x = self.attn2(self.norm2(x), context=context) + x
    return self.ff(self.norm3(x)) + x


def _backward_works(net: torch.nn.Module, denoiser: Denoiser, cond: Conditioning) -> bool:
    """Try one tiny forward/backward with a trainable cross-attention weight."""
    name = next(n for n, _ in net.named_parameters() if ".attn2.to_k." in n)
    weight = dict(net.named_parameters())[name]
    delta = torch.zeros_like(weight, requires_grad=True)
    x = torch.zeros(1, denoiser.latent_channels, 8, 8, device=weight.device, dtype=weight.dtype)
    t = torch.zeros(1, device=weight.device)
    small = {k: v[:1] for k, v in cond.items()}
    try:
        with DeltaInjection(net, [name], lambda _: delta):
            denoiser(x, t, small).float().square().mean().backward()
        return True
    except RuntimeError as e:
        if "inplace operation" in str(e):
            return False
        raise


@contextlib.contextmanager
def training_compatible(denoiser: ComfyDenoiser, cond: Conditioning):
    """Make backward work on this host for the duration of the block (a no-op on hosts >= 0.3.41)."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    with torch.inference_mode(False), torch.enable_grad():
        if _backward_works(denoiser.net, denoiser, cond):
            yield
            return
        original = BasicTransformerBlock._forward
        BasicTransformerBlock._forward = _out_of_place_forward
        try:
            yield
        finally:
            BasicTransformerBlock._forward = original


# --------------------------------------------------------------------------- erasure <-> MODEL


def network_shapes(patcher) -> dict[str, tuple[int, ...]]:
    """Shapes of the diffusion network's tensors, by their name inside the network."""
    return {k: tuple(v.shape) for k, v in patcher.model.diffusion_model.state_dict().items()}


def in_host_names(patcher, erasure: Erasure) -> Erasure:
    """The erasure with its tensors named as this host's network names them.

    Erasures trained on a diffusers UNet are renamed through the host's own diffusers -> ldm key map
    (the one its stock LoRA loader uses), so they apply like the files the stock loader reads.
    """
    if erasure.metadata.get("key_format") != "diffusers":
        return erasure
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(patcher.model.model_config.unet_config)
    rename = lambda name: mapping.get(name, name)  # noqa: E731  (unknown names fail the shape check)
    return Erasure(full={rename(n): t for n, t in erasure.full.items()},
                   lora={rename(n): f for n, f in erasure.lora.items()},
                   shapes={rename(n): s for n, s in erasure.shapes.items()},
                   metadata=dict(erasure.metadata, key_format="ldm"))


def warn_if_other_weights(patcher, erasure: Erasure) -> None:
    """Say so in the console when the model's tensors are not those the erasure was trained on."""
    weights = patcher.model.diffusion_model.state_dict()
    found = fingerprint({name: weights[name] for name in erasure.names})
    expected = erasure.metadata.get("fingerprint")
    if expected and found != expected:
        print(f"[Divergence Unlearn] note: this model's weights differ from those the erasure was trained on "
              f"(fingerprint {found}, erasure {expected}): a fine-tune, or other LoRAs were applied first. "
              "The erasure is applied all the same.")


def apply_erasure(patcher, erasure: Erasure, strength: float):
    """A clone of ``patcher`` with the erasure's deltas as weight patches (the input is untouched)."""
    erasure = in_host_names(patcher, erasure)
    erasure.check_against(network_shapes(patcher), model_family(patcher))
    warn_if_other_weights(patcher, erasure)
    out = patcher.clone()
    if strength != 0:
        patches = {"diffusion_model." + name: (delta,) for name, delta in erasure.deltas().items()}
        accepted = out.add_patches(patches, strength)
        if len(accepted) != len(patches):
            raise RuntimeError(f"ComfyUI accepted {len(accepted)} of {len(patches)} erasure tensors")
    return out
