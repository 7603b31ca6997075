"""Tiny models with the packed KV cache: a small-group configuration and a padded batch."""

from support.models import SyntheticVideo, build_model, make_inputs
from vidllm_ext import KVQuantConfig, PackedKVCache, patch
from vidllm_ext.integration.compat import cache_kwargs

SMALL = KVQuantConfig(1.5, 1.58, group_size=4, residual_length=8)


def two_videos(family):
    return make_inputs(family, [SyntheticVideo(), SyntheticVideo(seed=1, moving=(1, 2))], [3, 5])


def generate_into_packed_cache(family, config, **techniques):
    """A tiny ``family`` model patched with ``kv=config`` (and ``techniques``) generates 3
    greedy tokens for ``two_videos`` into a fresh ``PackedKVCache(config)``.

    Returns:
        (model, inputs, cache)
    """
    model, inputs = build_model(family), two_videos(family)
    patch(model, kv=config, **techniques)
    cache = PackedKVCache(config)
    model.generate(**inputs, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    return model, inputs, cache
