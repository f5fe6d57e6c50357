"""Tooling around the engine (``unlearn_core``), not part of it: the demo model and its main job
(``python -m unlearn_demo run``), its training, the headless ComfyUI runner (:mod:`unlearn_demo.headless`)
and the toy diffusers pipeline (:mod:`unlearn_demo.toy`). The engine never imports this package.
"""
