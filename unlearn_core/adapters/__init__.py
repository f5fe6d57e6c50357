"""Adapters from host model objects to :class:`unlearn_core.denoiser.Denoiser`.

The ComfyUI adapter lives in the pack's ``nodes/comfy_adapter.py`` (it needs ComfyUI's modules).
"""
