"""Helpers shared by the adapters."""

from __future__ import annotations

import torch
from torch import nn


def find_multimodal_model(model: nn.Module, vision_attribute: str) -> nn.Module:
    """The submodule that owns both the vision tower (``vision_attribute``) and the
    ``language_model``: the one whose forward receives token ids and pixel inputs."""
    for module in model.modules():
        if hasattr(module, "language_model") and hasattr(module, vision_attribute):
            return module
    raise ValueError(
        f"{type(model).__name__}: found no submodule holding both `language_model` and "
        f"`{vision_attribute}`; is this a full vision-language model?"
    )


def input_ids_of(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)


def split_columns(columns: torch.Tensor, sizes: list[int], what: str) -> list[torch.Tensor]:
    """Splits one sample's video-token columns into consecutive videos of the given sizes."""
    if columns.numel() != sum(sizes):
        raise ValueError(
            f"{what}: the sequence holds {columns.numel()} video tokens but the video grids "
            f"describe {sum(sizes)}"
        )
    return list(columns.split(sizes))
