"""A synthetic video-caption fine-tuning task for the tiny models of ``models.py``.

Each example is a prompt, one synthetic video and a short caption that names the video's class
(which tokens move); the labels are the caption and -100 everywhere else. Shared by the routed
training test and the distributed training script.
"""

from __future__ import annotations

from unittest import mock

import torch

import support.models as models
from support.models import SyntheticVideo, make_inputs

# Three classes of video, told apart by the token positions that move (16 tokens per step).
MOVING = ((0, 5, 6), (9, 10, 15), (3, 12, 13))
CAPTION_LENGTH = 4
IGNORE = -100


def tiny_model(family: str, layers: int = 4, seed: int = 0):
    """``models.build_model`` with ``layers`` decoder layers (routing needs >= 2: layer 0 is
    never routed; with 4, "interleaved" routes layers 1 and 3), in train mode."""
    with mock.patch.dict(models.TEXT, num_hidden_layers=layers):
        model = models.build_model(family, seed=seed)
    return model.train()


def caption_ids(video_class: int) -> list[int]:
    """The caption of a class: three class-specific tokens, then the end-of-sequence id."""
    return [60 + video_class, 70 + video_class, 80 + video_class, models.TEXT["eos_token_id"]]


def caption_batch(family: str, classes: list[int], seed: int = 0, prompt: int = 3) -> dict:
    """Forward arguments of one batch: sample i shows a video of class ``classes[i]`` (its static
    scene drawn from ``seed`` and i) and is labelled with that class's caption.

    Returns:
        ``make_inputs``' dict with the caption appended to every row (rows are left-padded, so
        they all end together) and ``labels`` ``[batch, length]``: the caption ids, -100 elsewhere.
    """
    videos = [SyntheticVideo(moving=MOVING[c], seed=1000 * seed + i) for i, c in enumerate(classes)]
    inputs = make_inputs(family, videos, [prompt] * len(classes))
    captions = torch.tensor([caption_ids(c) for c in classes])
    ones = torch.ones_like(captions)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], captions], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], ones], dim=1)
    if "mm_token_type_ids" in inputs:
        zeros = torch.zeros_like(captions, dtype=inputs["mm_token_type_ids"].dtype)
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], dim=1)
    labels = torch.full_like(inputs["input_ids"], IGNORE)
    labels[:, -CAPTION_LENGTH:] = captions
    inputs["labels"] = labels
    return inputs


def routers(model) -> dict[str, torch.nn.Module]:
    """The routers :func:`vidllm_ext.patch` added (``...layers.{i}.vidllm_router``), by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "vidllm_router"
    }
