"""The sub-2-bit KV cache inside a patched model: a default cache for generate, salient tokens.

VidKV keeps the values of the video tokens most relevant to the prompt at 2 bits. At each forward
that feeds video tokens into a :class:`PackedKVCache` whose configuration has ``salient_ratio`` >
0, a video token's salience is the mean dot product of its input embedding with the prompt's
text-token embeddings (every non-vision, non-padding token of the same forward); the top
``ceil(salient_ratio * n_video)`` are marked in the cache before the first decoder layer writes it.
A forward without text tokens (a streaming chunk of frames alone) marks none.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from vidllm_ext.contracts.kv_quant import KVQuantConfig
from vidllm_ext.integration.compat import cache_from, with_cache
from vidllm_ext.integration.kv_quant_cache import PackedKVCache
from vidllm_ext.integration.sequence import TechniqueInactive


def default_packed_cache(model, config: KVQuantConfig):
    """``model.generate`` that brings a fresh :class:`PackedKVCache` unless given a cache, and
    lets the packed attention function read any PackedKVCache it uses."""
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        cache = cache_from(kwargs)
        if cache is None and kwargs.get("use_cache", True):
            cache = PackedKVCache(config, packed_attention=True)
            with_cache(kwargs, cache, model.forward)
        elif isinstance(cache, PackedKVCache):
            cache.packed_attention = True
        return original(*args, **kwargs)

    return generate


def require_packed_cache(config: KVQuantConfig, module, args, kwargs: dict):
    """Language-model pre-hook of ``patch(kv=...)``: the forward's cache is a
    :class:`PackedKVCache` reading its codes directly. A forward that would build transformers'
    default cache gets a fresh PackedKVCache instead; a forward given another cache raises
    :class:`TechniqueInactive` rather than run without the packed cache."""
    cache = cache_from(kwargs)
    use_cache = kwargs.get("use_cache")
    if use_cache is None:
        use_cache = getattr(module.config, "use_cache", True)
    if cache is None and use_cache:
        with_cache(kwargs, PackedKVCache(config, packed_attention=True), module.forward)
        return args, kwargs
    if cache is not None and not isinstance(cache, PackedKVCache):
        raise TechniqueInactive(
            f"kv: the model is patched with a packed KV cache, but this forward got a "
            f"{type(cache).__name__}; pass a vidllm_ext.PackedKVCache (or none, and one is made), "
            "or unpatch the model to use another cache"
        )
    if cache is not None:
        cache.packed_attention = True
    return None


def mark_salient_tokens(adapter, forward, kwargs: dict) -> None:
    """Language-model stage: mark this forward's salient video tokens in the packed cache.
    ``forward``: the call's :class:`~vidllm_ext.integration.patching.ForwardInputs`."""
    cache, embeds = cache_from(kwargs), kwargs.get("inputs_embeds")
    if not isinstance(cache, PackedKVCache) or cache.config.salient_ratio == 0 or embeds is None:
        return
    input_ids = (forward.captured or {}).get("input_ids")
    if input_ids is None:
        return
    if forward.layout is not None:  # DTD shortened this forward's sequence
        input_ids = forward.layout.gather(input_ids, 1)
    if input_ids.shape != embeds.shape[:2]:
        return
    input_ids = input_ids.to(embeds.device)
    video = input_ids == adapter.video_token_id
    vision_ids = torch.tensor(adapter.vision_token_ids, device=embeds.device)
    text = ~torch.isin(input_ids, vision_ids)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == input_ids.shape:
        text &= mask.bool()
        video &= mask.bool()
    if not video.any() or not text.any():
        return
    chosen = salient_video_tokens(embeds, video, text, cache.config.salient_ratio)
    cache.mark_salient(chosen)


def salient_video_tokens(
    embeds: Tensor, video_mask: Tensor, text_mask: Tensor, ratio: float
) -> Tensor:
    """bool [B, L]: per sample, the top ceil(ratio * n_video) video tokens by salience.

    A video token's salience is the mean dot product of its input embedding with the prompt's
    text-token embeddings (float32); ties go to the earlier token, NaN ranks lowest.
    """
    x = embeds.float()
    text = text_mask.to(x.dtype).unsqueeze(-1)
    text_mean = (x * text).sum(1) / text.sum(1).clamp_min(1.0)  # [B, E]
    score = torch.einsum("ble,be->bl", x, text_mean)
    score = torch.nan_to_num(score, nan=-math.inf).masked_fill(~video_mask, -math.inf)
    chosen = torch.zeros_like(video_mask)
    for row in range(x.shape[0]):  # one top-k per sample, not per token
        count = math.ceil(ratio * int(video_mask[row].sum()))
        if count:
            order = torch.sort(score[row], descending=True, stable=True).indices[:count]
            chosen[row, order] = True
    return chosen
