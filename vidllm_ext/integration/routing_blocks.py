"""What a routed decoder layer needs to know about its own blocks: linear attention, sparse MoE.

Found on the instance and its config (``layer_types``, a block with ``gate`` and ``experts``),
never by importing a family's classes.
"""

from __future__ import annotations

import torch
from torch import nn


def is_linear_attention(text_config, index: int) -> bool:
    """Whether decoder layer ``index`` is a linear-attention layer (Qwen3.5's Gated DeltaNet)."""
    layer_types = getattr(text_config, "layer_types", None)
    return bool(layer_types) and layer_types[index] == "linear_attention"


def sparse_moe_block(layer: nn.Module) -> nn.Module | None:
    """The layer's sparse mixture-of-experts block (an ``mlp`` with a ``gate`` and ``experts``)."""
    block = getattr(layer, "mlp", None)
    if block is not None and hasattr(block, "gate") and hasattr(block, "experts"):
        return block
    return None


def experts_per_token(block: nn.Module, text_config) -> int:
    """How many experts the block's router picks per token (its top-k)."""
    top_k = getattr(block.gate, "top_k", None) or getattr(text_config, "num_experts_per_tok", None)
    if not top_k:
        raise ValueError(
            f"routing: cannot tell how many experts {type(block).__name__} picks per token (no "
            "gate.top_k, no num_experts_per_tok in the text config)"
        )
    return int(top_k)


class RealRowsOnly:
    """A removable handle: while ``rows`` is set (bool ``[B, L]``), the MoE block computes only
    those rows (one sequence of the real tokens, in order) and returns zeros elsewhere, so left
    padding never reaches the router or an expert. Every token is routed on its own, so the real
    rows get what they would get in the padded batch."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.rows: torch.Tensor | None = None
        self.original_forward = block.forward
        block.forward = self.forward

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        rows = self.rows
        if rows is None or hidden_states.dim() != 3 or bool(rows.all()):
            return self.original_forward(hidden_states, *args, **kwargs)
        output = self.original_forward(hidden_states[rows][None], *args, **kwargs)
        first = output[0] if isinstance(output, tuple) else output
        full = first.new_zeros(hidden_states.shape).index_put((rows,), first[0])
        return (full, *output[1:]) if isinstance(output, tuple) else full

    def remove(self) -> None:
        if "forward" in vars(self.block):
            del self.block.forward
