"""The pool sampler on every schedule: linear, cosine (terminal abar 2.4e-9) and zero terminal SNR (abar 0),
for epsilon and v models, on an analytic denoiser whose optimal prediction is known, and on ComfyUI MODELs
whose schedule the real ModelSamplingDiscrete node changed (both hosts: COMFYUI_PATH)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from helpers import AnalyticDenoiser, pool_of
from unlearn_core.samples import build_pool
from unlearn_core.schedule import EPSILON_MIN_ABAR, sampling_start, scaled_linear_alphas_cumprod

SCHEDULES = {
    "linear": scaled_linear_alphas_cumprod(),
    "cosine": DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.float(),
    "zsnr": DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True).alphas_cumprod.float(),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_pools_stay_in_the_data_range_and_land_on_the_data(schedule, prediction):
    denoiser = AnalyticDenoiser(SCHEDULES[schedule], prediction)
    x0 = pool_of(denoiser).x0
    assert x0.isfinite().all() and x0.abs().max() < 1.0, f"pool leaves [-1, 1]: max |x0| {x0.abs().max():.3g}"
    nearest = (x0[:, None] - denoiser.images[None]).flatten(2).abs().amax(-1).amin(1)
    assert nearest.max() < 0.1, "a pool sample is not one of the data's images"


@pytest.mark.parametrize("schedule", ["cosine", "zsnr"])
def test_trajectory_pools_stay_bounded_on_near_zero_terminal_schedules(schedule):
    """The exact denoiser corrects a bad first x0 later, so the final samples hide it; the path does not
    (starting at cosine's t = 999 put x_t at 20 standard deviations, which the trajectory source trains on)."""
    pool = pool_of(AnalyticDenoiser(SCHEDULES[schedule], "epsilon"), source="trajectory", samples=8)
    largest = pool.trajectory.abs().max()
    assert pool.trajectory.isfinite().all() and largest < 6, f"max |x_t| {largest:.3g}"
    assert SCHEDULES[schedule][pool.trajectory_timesteps[0]] >= EPSILON_MIN_ABAR


def test_sampling_starts_at_the_end_except_where_an_epsilon_model_cannot_predict_x0():
    assert sampling_start(SCHEDULES["linear"], "epsilon") == 999  # SD1.x: unchanged
    assert sampling_start(SCHEDULES["zsnr"], "v_prediction") == 999
    start = sampling_start(SCHEDULES["cosine"], "epsilon")
    assert SCHEDULES["cosine"][start] >= EPSILON_MIN_ABAR > SCHEDULES["cosine"][start + 1]


def test_a_known_data_range_clips_the_prediction():
    denoiser = AnalyticDenoiser(SCHEDULES["cosine"], "epsilon")
    denoiser.images = denoiser.images / 0.9 * 1.5  # data outside the declared range
    denoiser.data_range = (-1.0, 1.0)
    assert pool_of(denoiser, samples=4).x0.abs().max() <= 1.0


# --------------------------------------------------------------------------- ComfyUI MODELs


def _sampling_patched(model, sampling: str, zsnr: bool):
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    with torch.inference_mode():
        return ModelSamplingDiscrete().patch(model, sampling, zsnr)[0]


def _comfy_denoiser(pack_nodes, model, clip):
    """The pack's ComfyDenoiser class as ComfyUI imported it (via the node module that uses it)."""
    from comfy_host import pack_submodule

    return pack_submodule(pack_nodes, "nodes.comfy_adapter").ComfyDenoiser(model, clip)


def _pool_std(denoiser) -> float:
    try:
        cond = denoiser.encode_prompts(["a red shape"] * 2, (32, 32))
        uncond = denoiser.encode_prompts([""] * 2, (32, 32))
        pool = build_pool("anchor_samples", denoiser, cond, uncond, 2, (4, 4, 4), 10, 6.0,
                          torch.Generator().manual_seed(0))
    finally:
        denoiser.release()
    assert pool.x0.isfinite().all()
    return float(pool.x0.std())


def test_comfy_schedule_comes_from_the_patched_model_and_zsnr_pools_stay_in_scale(pack_nodes, sd15_model, sd15_clip):
    """zsnr used to take this pool's std from ~19 to ~7,000 (and was ignored when set by the node)."""
    reference = _pool_std(_comfy_denoiser(pack_nodes, sd15_model, sd15_clip))
    for sampling in ("eps", "v_prediction"):
        denoiser = _comfy_denoiser(pack_nodes, _sampling_patched(sd15_model, sampling, zsnr=True), sd15_clip)
        assert denoiser.prediction_type == {"eps": "epsilon", "v_prediction": "v_prediction"}[sampling]
        assert denoiser.alphas_cumprod[-1] < 1e-7 and denoiser.alphas_cumprod[0] > 0.99
        std = _pool_std(denoiser)
        assert std < 3 * reference, f"{sampling}+zsnr pool std {std:.3g} vs {reference:.3g} on the model's own schedule"


def test_a_schedule_it_cannot_train_is_a_clear_error(pack_nodes, sd15_model, sd15_clip):
    with pytest.raises(ValueError, match="discrete schedule.*remove or change the model-sampling node"):
        _comfy_denoiser(pack_nodes, _sampling_patched(sd15_model, "lcm", zsnr=False), sd15_clip)
