"""Bad sizes, configs and tampered structures (merge plans, packed KV, cache layers) are
ValueError/TypeError naming the argument (issue 15, defects 4 to 6); empty shapes are results."""

import dataclasses

import pytest
import torch

from vidllm_ext import KVQuantConfig, PackedKVCache, ops
from vidllm_ext.reference import kv_quant as reference_kv

CONFIG = KVQuantConfig(1.5, 1.58, group_size=4, residual_length=0)


# ---- defect 4: proportional_attention_bias --------------------------------------------------


@pytest.mark.parametrize(
    "size, error, message",
    [
        (torch.tensor([1, 2]), TypeError, "size: expected dtype"),
        (torch.tensor([1.0, 2.0], dtype=torch.float64), TypeError, "size: expected dtype"),
        (torch.tensor([1.0, -2.0]), ValueError, "size: expected finite positive"),
        (torch.tensor([1.0, 0.0]), ValueError, "size: expected finite positive"),
        (torch.tensor([1.0, float("nan")]), ValueError, "size: expected finite positive"),
        (torch.tensor([float("inf")]), ValueError, "size: expected finite positive"),
        (torch.tensor(1.0), ValueError, "size: expected a tensor"),
        ([1.0, 2.0], TypeError, "size: expected a torch.Tensor, got list"),
        (None, TypeError, "size: expected a torch.Tensor, got NoneType"),
    ],
)
def test_bad_sizes_are_named(size, error, message):
    with pytest.raises(error, match=message):
        ops.proportional_attention_bias(size)


def test_bad_bias_dtype_is_named():
    with pytest.raises(TypeError, match="dtype: expected None"):
        ops.proportional_attention_bias(torch.ones(3), dtype=torch.int32)


def test_unchecked_sizes_when_switched_off(monkeypatch):
    monkeypatch.setenv("VIDLLM_CHECK_STRUCTURES", "0")
    assert ops.proportional_attention_bias(torch.tensor([-1.0])).isnan().all()


# ---- defect 5: empty shapes and wrong config / packed types ------------------------------------


@pytest.mark.parametrize("shape", [(0, 2, 8, 16), (2, 0, 8, 16), (0, 0, 8, 16)])
@pytest.mark.parametrize("explicit_split", [False, True])
def test_quantize_keys_of_empty_shapes(shape, explicit_split):
    keys = torch.randn(shape)
    split = torch.arange(8).repeat(shape[1], 1) if explicit_split else None
    packed = ops.quantize_keys(keys, CONFIG, split)
    expected = reference_kv.quantize_keys(keys, CONFIG, split)
    assert packed.shape == expected.shape == shape
    assert torch.equal(ops.dequantize_keys(packed), reference_kv.dequantize_keys(expected))


@pytest.mark.parametrize(
    "config, what",
    [(None, "NoneType"), ([1.5], "list"), (KVQuantConfig, "the class KVQuantConfig")],
)
@pytest.mark.parametrize("op", [ops.quantize_keys, ops.quantize_values])
def test_config_must_be_an_instance(op, config, what):
    with pytest.raises(TypeError, match=f"config: expected a KVQuantConfig instance, got {what}"):
        op(torch.randn(1, 2, 8, 16), config)


@pytest.mark.parametrize("packed", [None, [1], CONFIG])
def test_dequantize_needs_packed_structures(packed):
    with pytest.raises(TypeError, match="packed: expected a PackedKeys"):
        ops.dequantize_keys(packed)
    with pytest.raises(TypeError, match="packed: expected a PackedValues"):
        ops.dequantize_values(packed)


# ---- defect 6: tampered structures ------------------------------------------------------------


def _plan():
    return ops.bipartite_soft_matching(
        torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(0)), 3
    )


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: p._replace(slot=p.slot + 10), r"plan.slot: expected entries in \[0, 6\)"),
        (lambda p: p._replace(kept_index=p.kept_index.flip(1)), "plan.kept_index: expected str"),
        (lambda p: p._replace(source_index=p.source_index * 0 - 1), "plan.source_index"),
        (lambda p: p._replace(source_offsets=p.source_offsets * 2), "plan.source_offsets"),
        (lambda p: p._replace(r=2), r"plan.kept_index: expected shape \[2, 7\]"),
        (lambda p: p._replace(slot=p.slot.int()), "plan.slot: expected dtype torch.int64"),
        (lambda p: p._replace(slot=p.slot[0]), "plan.slot: expected a 2-D tensor"),
        (lambda p: p._replace(slot=p.slot.roll(1, 1)), "plan.slot"),
        (lambda p: p._replace(source_index=p.source_index.roll(1, 0)), "plan"),
        (lambda p: p._replace(slot=None), "plan.slot: expected a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("op", ["merge_wavg", "unmerge"])
def test_tampered_plans_are_rejected(tamper, message, op):
    plan = tamper(_plan())
    with pytest.raises((ValueError, TypeError), match=message):
        if op == "merge_wavg":
            ops.merge_wavg(plan, torch.randn(2, 9, 4))
        else:
            ops.unmerge(plan, torch.randn(2, 6, 4))


def test_another_calls_plan_is_a_valid_plan():
    """A plan from other metrics is still a consistent plan: it merges by its own choices."""
    plan = _plan()
    x = torch.randn(2, 9, 4)
    merged, _ = ops.merge_wavg(plan, x)
    assert merged.shape == (2, 6, 4)


def _packed_keys():
    return ops.quantize_keys(torch.randn(2, 2, 8, 16), CONFIG)


def _packed_values(salient: bool):
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 5]] = True
    return ops.quantize_values(torch.randn(2, 2, 8, 16), CONFIG, mask if salient else None)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(channel_split=None), "packed.channel_split: required"),
        (dict(head_dim=17), "packed.codes1: expected shape"),
        (dict(group_size=3), r"packed.scale2: expected shape \[2, 2, 3, D2\]"),
        (dict(transform="dct"), "packed.transform"),
        (dict(dtype=torch.int8), "packed.dtype"),
        (dict(codes2=torch.zeros(2, 2, 7, 2, dtype=torch.uint8)), "packed.codes1"),
        (dict(codes1=torch.zeros(2, 2, 8, 1)), "packed.codes1: expected dtype torch.uint8"),
    ],
)
def test_tampered_packed_keys_are_rejected(change, message):
    packed = dataclasses.replace(_packed_keys(), **change)
    with pytest.raises((ValueError, TypeError), match=message):
        ops.dequantize_keys(packed)


@pytest.mark.parametrize("bad", [[[0, 1, 2, 3, 4, 5, 6, 16]] * 2, [[3, 2, 1, 0, 4, 5, 6, 7]] * 2])
def test_tampered_channel_split_is_rejected(bad):
    packed = _packed_keys()
    packed = dataclasses.replace(packed, channel_split=torch.tensor(bad, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"packed\.channel_split"):
        ops.dequantize_keys(packed)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(mode="minmax2"), "packed.codes: expected shape|packed.zero"),
        (dict(salient_index=torch.tensor([[1, 9], [0, 1]])), r"salient_index: expected entries"),
        (dict(salient_index=torch.tensor([[5, 1], [0, 1]])), "salient_index: expected strictly"),
        (dict(salient_index=torch.tensor([[1], [0]])), "packed.salient_codes: expected shape"),
        (dict(salient_zero=None), "packed: expected all of"),
        (dict(scale=torch.zeros(2, 2, 1, 16)), "packed.scale: expected shape"),
    ],
)
def test_tampered_packed_values_are_rejected(change, message):
    packed = dataclasses.replace(_packed_values(salient=True), **change)
    with pytest.raises((ValueError, TypeError), match=message):
        ops.dequantize_values(packed)


def _layer():
    cache = PackedKVCache(KVQuantConfig(1.5, 1.58, group_size=4, residual_length=4))
    cache.update(torch.randn(1, 2, 13, 16), torch.randn(1, 2, 13, 16), 0)
    return cache.layers[0]


def test_a_consistent_layer_is_accepted():
    assert ops.packed_attention(torch.randn(1, 2, 1, 16), _layer()).shape == (1, 2, 1, 16)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda layer: setattr(layer, "quantized_length", 4), r"key_blocks\[0\]: expected shape"),
        (lambda layer: setattr(layer, "values", layer.values[:, :1]), "layer_state.values"),
        (lambda layer: layer.key_blocks.append(layer.key_blocks[0]), "expected one block"),
        (lambda layer: layer.value_blocks.append(layer.value_blocks[0]), "expected 8 tokens"),
        (
            lambda layer: layer.value_blocks.__setitem__(
                0, layer.value_blocks[0].map_batch(lambda t: t.repeat(2, *[1] * (t.dim() - 1)))
            ),
            r"value_blocks\[0\]: expected shape",
        ),
    ],
)
def test_tampered_layers_are_rejected(tamper, message):
    layer = _layer()
    tamper(layer)
    with pytest.raises(ValueError, match=message):
        ops.packed_attention(torch.randn(1, 2, 1, 16), layer)
