"""A diffusers twin of a tiny ComfyUI SD15-family UNet (see ``tiny_comfy.SD15_TINY``), weights shared.

The twin is built from diffusers' own ``UNet2DConditionModel`` with the architecture that ComfyUI's
one-level SD15 UNet has (one CrossAttnDownBlock2D without a downsampler, the cross-attention mid
block, one CrossAttnUpBlock2D without an upsampler, 8 heads, conv projections in the transformers),
and every tensor is copied through ComfyUI's own diffusers -> ldm key map
(``comfy.utils.unet_to_diffusers``), the map the stock LoRA loader uses to resolve
``lora_unet_<diffusers path>`` keys.
"""

from __future__ import annotations

import torch


def diffusers_twin(patcher):
    """``(unet, names)``: a diffusers UNet equal to ``patcher``'s diffusion model, and the key map used.

    ``names`` maps every diffusers parameter name to its ComfyUI/ldm name (without ``diffusion_model.``).
    Raises ``AssertionError`` if the map does not pair the two state dicts one to one with equal shapes.
    """
    import comfy.utils
    from diffusers import UNet2DConditionModel

    unet_config = patcher.model.model_config.unet_config
    assert len(unet_config["channel_mult"]) == 1 and unet_config["num_heads"] == 8, "built for SD15_TINY only"
    channels = unet_config["model_channels"]
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=unet_config["num_res_blocks"][0],
        block_out_channels=(channels,), down_block_types=("CrossAttnDownBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn", up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=unet_config["context_dim"], attention_head_dim=unet_config["num_heads"],
        norm_num_groups=32, norm_eps=1e-5, use_linear_projection=unet_config["use_linear_in_transformer"],
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    ).float().eval()

    diffusers_to_ldm = comfy.utils.unet_to_diffusers(unet_config)
    ldm = patcher.model.diffusion_model.state_dict()
    mine = unet.state_dict()
    names = {k: diffusers_to_ldm[k] for k in mine if k in diffusers_to_ldm}
    unmapped = sorted(set(mine) - set(names))
    assert not unmapped, f"diffusers tensors without an ldm name: {unmapped[:5]}"
    assert sorted(names.values()) == sorted(ldm), (
        f"the map does not cover the ComfyUI UNet one to one: missing {sorted(set(ldm) - set(names.values()))[:5]}")
    with torch.no_grad():
        for k, v in mine.items():
            src = ldm[names[k]]
            assert src.shape == v.shape, f"{k} {tuple(v.shape)} vs {names[k]} {tuple(src.shape)}"
            v.copy_(src)
    return unet, names
