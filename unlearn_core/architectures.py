"""What each network architecture calls its tensors: the parameter sets and checkpointed blocks (one registry).

The parameter-set names are the same for every architecture (saved workflows and erasure files keep
them); what each selects follows the architecture's layout. Names are the network's own
(``named_parameters()``): the ldm/ComfyUI spelling, and for the UNet also the diffusers one, whose
attention is spelled the same (``attn1`` self-, ``attn2`` cross-attention).

=================  ==========================  ================================  ======================================
set                UNet (SD1.x, SD2.x, SDXL)   Flux (dev, schnell, Chroma-like)  MMDiT (SD3, SD3.5)
=================  ==========================  ================================  ======================================
cross_attn_kv      ``attn2.to_k``, ``to_v``    ``double_blocks.*.txt_attn.qkv``  ``joint_blocks.*.context_block.attn.qkv``
                   (no biases there)           (weights, not biases)             (weights, not biases)
cross_attn         ``attn2.*``                 ``double_blocks.*.txt_attn.*``    ``joint_blocks.*.context_block.attn.*``
attn               ``attn1.*``, ``attn2.*``    ``img_attn.*``, ``txt_attn.*``    ``joint_blocks.*.attn*``
context_embedder   (none)                      ``txt_in``                        ``context_embedder``
non_cross_attn     all but ``attn2`` and the   all but ``txt_attn`` and the      all but ``context_block.attn`` and the
                   time/class embeddings       time/vector/guidance/text inputs  time/pooled/context embedders
full               every tensor                every tensor                      every tensor
=================  ==========================  ================================  ======================================

In the transformers the text tokens have their own projections: Flux's double blocks and SD3's
context blocks compute the text stream's queries, keys and values in one fused ``qkv`` layer, so
``cross_attn_kv`` there trains the text stream's q as well (EraseAnything's choice on Flux).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Rule = Callable[[str], bool]


@dataclass(frozen=True)
class Architecture:
    name: str
    marker: str  # a substring only this architecture's tensor names have
    parameter_sets: dict[str, Rule]
    checkpoint_lists: tuple[str, ...] = ()  # ModuleLists whose every block gradient checkpointing wraps
    default_lora_rank: int = 0  # lora_rank -1 (auto): full updates on the UNets, a LoRA on the large transformers
    blocks_add_into_inputs: bool = False  # (Flux) checkpointing then runs each block on copies of its inputs
    reads_text: Rule = lambda n: False  # layers whose input is the text conditioning itself (keep_projection)


def _unet_sets() -> dict[str, Rule]:
    embeddings = ("time_embed", "time_embedding", "label_emb", "add_embedding")
    return {
        "cross_attn_kv": lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n,
        "cross_attn": lambda n: ".attn2." in n,
        "attn": lambda n: ".attn1." in n or ".attn2." in n,
        "non_cross_attn": lambda n: ".attn2." not in n and not n.startswith(embeddings),
        "full": lambda n: True,
        "context_embedder": lambda n: False,
    }


def _flux_sets() -> dict[str, Rule]:
    inputs = ("time_in.", "vector_in.", "guidance_in.", "txt_in.")
    return {
        "cross_attn_kv": lambda n: n.startswith("double_blocks.") and n.endswith(".txt_attn.qkv.weight"),
        "cross_attn": lambda n: n.startswith("double_blocks.") and ".txt_attn." in n,
        "attn": lambda n: ".img_attn." in n or ".txt_attn." in n,
        "non_cross_attn": lambda n: ".txt_attn." not in n and not n.startswith(inputs),
        "full": lambda n: True,
        "context_embedder": lambda n: n.startswith("txt_in."),
    }


def _mmdit_sets() -> dict[str, Rule]:
    inputs = ("t_embedder.", "y_embedder.", "context_embedder.")
    return {
        "cross_attn_kv": lambda n: n.endswith(".context_block.attn.qkv.weight"),
        "cross_attn": lambda n: ".context_block.attn." in n,
        "attn": lambda n: n.startswith("joint_blocks.") and (".attn." in n or ".attn2." in n),
        "non_cross_attn": lambda n: ".context_block.attn." not in n and not n.startswith(inputs),
        "full": lambda n: True,
        "context_embedder": lambda n: n.startswith("context_embedder."),
    }


ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture("unet", "attn2.", _unet_sets(),
                         reads_text=lambda n: n.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))),
    "flux": Architecture("flux", "double_blocks.", _flux_sets(), ("double_blocks", "single_blocks"), 16, True,
                         reads_text=lambda n: n.startswith("txt_in.")),
    "mmdit": Architecture("mmdit", "joint_blocks.", _mmdit_sets(), ("joint_blocks",), 16,
                          reads_text=lambda n: n.startswith("context_embedder.")),
}

PARAMETER_SET_NAMES = list(ARCHITECTURES["unet"].parameter_sets)


def architecture_of(names: list[str]) -> Architecture:
    """The architecture whose marker the tensor ``names`` contain (Flux and MMDiT checked before the UNet)."""
    for arch in (ARCHITECTURES["flux"], ARCHITECTURES["mmdit"], ARCHITECTURES["unet"]):
        if any(arch.marker in name for name in names):
            return arch
    raise ValueError("this network is neither a Stable Diffusion UNet, a Flux transformer nor an MMDiT (SD3): "
                     f"Divergence Unlearn supports {', '.join(ARCHITECTURES)}")
