"""ops.packed_attention: every bad argument raises a clear exception, and the segment binding
writes every partial it owns."""

import importlib

import pytest
import torch
from support.kv_attention_cases import CONFIGS, cache_layer, queries

from vidllm_ext import PackedKVCache, ops
from vidllm_ext.ops import _kv_attention_segments as seg
from vidllm_ext.ops._backend import C, dl


@pytest.fixture(scope="module")
def layer():
    return cache_layer(CONFIGS["1.5/1.58"], 50)  # batch 2, 2 KV heads, head_dim 16


@pytest.mark.parametrize(
    "make_q, kwargs, error, message",
    [
        (lambda: queries(2, 3, 1, 16), {}, ValueError, "not a multiple of the cache's 2 KV heads"),
        (lambda: queries(2, 4, 1, 8), {}, ValueError, "head_dim 8"),
        (lambda: queries(3, 4, 1, 16), {}, ValueError, "batch 3"),
        (lambda: queries(2, 4, 51, 16), {}, ValueError, "newest of the 50 cached"),
        (lambda: queries(2, 4, 16, 16)[0], {}, ValueError, r"\[B, Hq, Lq, D\]"),
        (lambda: queries(2, 4, 1, 16).long(), {}, TypeError, "float32, float16 or bfloat16"),
        (lambda: [1.0], {}, TypeError, "torch.Tensor"),
        (lambda: queries(2, 4, 1, 16), dict(scale=float("nan")), ValueError, "finite"),
        (lambda: queries(2, 4, 1, 16), dict(scale="0.1"), ValueError, "finite"),
        (
            lambda: queries(2, 4, 1, 16),
            dict(mask=torch.ones(2, 1, 50)),
            TypeError,
            "bool tensor",
        ),
        (
            lambda: queries(2, 4, 1, 16),
            dict(mask=torch.ones(2, 1, 49, dtype=torch.bool)),
            ValueError,
            r"mask must be \[B, Lq, T\]",
        ),
        (
            lambda: queries(2, 4, 1, 16),
            dict(mask=torch.ones(2, 4, 1, 50, dtype=torch.bool)),
            ValueError,
            "per-head",
        ),
    ],
)
def test_bad_arguments_raise(layer, make_q, kwargs, error, message):
    with pytest.raises(error, match=message):
        ops.packed_attention(make_q(), layer, **kwargs)


def test_an_empty_cache_layer_is_rejected():
    cache = PackedKVCache(CONFIGS["1.5/1.58"])
    cache.update(torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16), 0)
    cache.layers[0].reset()
    with pytest.raises(ValueError, match="initialized PackedKVCache layer"):
        ops.packed_attention(queries(1, 2, 1, 16), cache.layers[0])
    with pytest.raises(ValueError, match="initialized PackedKVCache layer"):
        ops.packed_attention(queries(1, 2, 1, 16), object())


def segment_call(layer, q, **overrides):
    """One C.kv_attention_segment call over the layer's first segment, NaN-poisoned partials."""
    segments = seg.layer_segments(layer)
    splits = seg.assign_splits(segments, q, 2)
    first = segments[0]
    q_full = seg.scale_query(q, 0.25)
    partials = [torch.full((*q.shape[:3], splits), float("nan")) for _ in range(2)]
    partials.append(torch.full((*q.shape[:3], splits, q.shape[3]), float("nan")))
    k = first.keys
    args = dict(
        q_full=dl(q_full),
        q_packed=dl(seg.packed_queries(q_full, layer.key_blocks[0])),
        query_start=layer.get_seq_length() - q.shape[2],
        key_format=k.format,
        keys=None,
        codes2=dl(k.codes2),
        scale2=dl(k.scale2),
        zero2=dl(k.zero2),
        codes1=dl(k.codes1),
        alpha1=dl(k.alpha1),
        key_group_size=k.group_size,
        key_position_start=0,
        value_format=first.value_format,
        values=None,
        value_codes=dl(first.codes),
        value_scale=dl(first.scale),
        value_zero=None,
        value_group_size=first.group_size,
        scale_type="float16",
        token_map=None,
        key_start=0,
        split_rows=first.split_rows,
        split_offset=first.split_offset,
        mask=None,
        part_max=dl(partials[0]),
        part_sum=dl(partials[1]),
        part_acc=dl(partials[2]),
    )
    args.update(overrides)
    C.kv_attention_segment(**args)
    return first, partials


def test_the_segment_kernel_writes_every_partial_it_owns(layer):
    q = queries(2, 4, 3, 16)
    first, (part_max, part_sum, part_acc) = segment_call(layer, q)
    owned = slice(first.split_offset, first.split_offset + first.splits)
    assert not part_max[..., owned].isnan().any() and not part_acc[..., owned, :].isnan().any()
    assert not part_sum[..., owned].isnan().any()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(key_format="dense"), "key_format"),
        (dict(value_format="int4"), "value_format"),
        (dict(scale_type="float64"), "scale_type"),
        (dict(scale2=None), "scale2: expected a tensor"),
        (dict(q_packed=None), "q_packed"),
        (dict(split_rows=0), "split_rows"),
        (dict(split_offset=1000), "split_offset"),
        (dict(key_start=40), "key_start"),
        (dict(token_map=dl(torch.full((2, 32), 99, dtype=torch.int64))), "key tokens in"),
        (dict(value_zero=dl(torch.zeros(2, 2, 3, 16, dtype=torch.float16))), "value_zero"),
        (dict(key_group_size=0), "key_group_size"),
        (dict(mask=dl(torch.ones(2, 3, 10, dtype=torch.bool))), "mask: covers 10"),
    ],
)
def test_the_binding_names_the_bad_argument(layer, overrides, message):
    with pytest.raises(ValueError, match=message):
        segment_call(layer, queries(2, 4, 3, 16), **overrides)


def test_opcheck_segment_and_combine(layer, monkeypatch):
    module = importlib.import_module("vidllm_ext.ops.kv_attention")
    seen = []
    original = module._segment_op

    def capture(*args):
        seen.append(args)
        return original(*args)

    monkeypatch.setattr(module, "_segment_op", capture)
    q = queries(2, 4, 3, 16)
    ops.packed_attention(q, layer)
    for args in seen:
        torch.library.opcheck(torch.ops.vidllm.packed_attention_segment_.default, args)
    part_max, part_sum, part_acc = seen[0][-3:]
    torch.library.opcheck(
        torch.ops.vidllm.packed_attention_combine.default,
        (part_max, part_sum, part_acc, torch.bfloat16),
    )
