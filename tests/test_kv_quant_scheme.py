"""The sub-2-bit KV scheme: config, transforms, channel split, quantizers (ops vs reference)."""

import dataclasses
import math

import pytest
import torch
from conftest import DEVICES
from support.kv import keys_problem, outlier_kv, values_problem

import vidllm_ext
from vidllm_ext import KVQuantConfig, ops, reference
from vidllm_ext.ops import kv_quant as ops_kv
from vidllm_ext.reference import kv_quant as ref_kv
from vidllm_ext.reference import kv_quant_pack as kv_pack

# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(key_bits=0.5), "key_bits"),
        (dict(key_bits=3), "key_bits"),
        (dict(value_bits=1.5), "value_bits"),
        (dict(group_size=0), "group_size"),
        (dict(residual_length=100), "multiple of group_size"),
        (dict(key_transform="dct"), "key_transform"),
        (dict(value_axis="head"), "value_axis"),
        (dict(value_axis="token", value_bits=1.58), "value_bits=2"),
        (dict(salient_ratio=1.5), "salient_ratio"),
        (dict(salient_ratio=0.2, value_bits=2), "value_bits=1.58"),
        (dict(scale_dtype="float32"), "scale_dtype"),
        (dict(group_size=32.0), "int"),
        (dict(key_bits=float("nan")), "finite"),
    ],
)
def test_config_rejects_invalid_combinations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KVQuantConfig(**kwargs)


def test_config_hadamard_needs_power_of_two_one_bit_channels():
    cfg = KVQuantConfig(key_transform="hadamard")
    cfg.check_head_dim(128)  # 64 one-bit channels
    with pytest.raises(ValueError, match="power-of-two"):
        cfg.check_head_dim(24)  # 12 one-bit channels


def test_two_bit_channel_count_rounds_half_to_even():
    assert KVQuantConfig(key_bits=1.5).two_bit_key_channels(128) == 64
    assert KVQuantConfig(key_bits=1.5).two_bit_key_channels(5) == 2  # 2.5 -> 2
    assert KVQuantConfig(key_bits=1.25).two_bit_key_channels(10) == 2  # 2.5 -> 2
    assert KVQuantConfig(key_bits=2).two_bit_key_channels(7) == 7
    assert KVQuantConfig(key_bits=1).two_bit_key_channels(7) == 0


# ---- transforms and channel split -----------------------------------------------------------


# The ops' matrices (float32) are checked against the definitions, and against the oracle's
# float64 matrices written from the formulas.
IMPLEMENTATIONS = pytest.mark.parametrize("impl", [ops_kv, ref_kv], ids=["ops", "oracle"])


@IMPLEMENTATIONS
@pytest.mark.parametrize("kind", ["fft", "hadamard", "none"])
@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_transforms_are_orthonormal(impl, kind, n):
    m = impl.transform_matrix(kind, n).double()
    torch.testing.assert_close(m @ m.T, torch.eye(n, dtype=torch.float64), atol=1e-6, rtol=0)


@IMPLEMENTATIONS
@pytest.mark.parametrize("n", [1, 2, 7, 8, 33])
def test_fft_transform_is_the_pinned_real_dft(impl, n):
    x = torch.randn(5, n, dtype=torch.float64)
    spectrum = torch.fft.rfft(x, norm="ortho")
    expected = [spectrum[:, 0].real]
    for k in range(1, (n - 1) // 2 + 1):
        expected += [math.sqrt(2) * spectrum[:, k].real, math.sqrt(2) * spectrum[:, k].imag]
    if n % 2 == 0 and n > 1:
        expected.append(spectrum[:, n // 2].real)
    got = x @ impl.transform_matrix("fft", n).double().T
    torch.testing.assert_close(got, torch.stack(expected, 1), atol=1e-6, rtol=0)


@IMPLEMENTATIONS
def test_hadamard_is_sylvester(impl):
    m = impl.transform_matrix("hadamard", 4).double() * 2
    expected = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1.0]])
    assert torch.equal(m, expected.double())
    with pytest.raises(ValueError, match="power-of-two"):
        impl.transform_matrix("hadamard", 6)


@pytest.mark.parametrize("kind", ["fft", "hadamard", "none"])
@pytest.mark.parametrize("n", [2, 8, 64])
def test_ops_transforms_are_the_oracles_within_float32_rounding(kind, n):
    ops_matrix = ops_kv.transform_matrix(kind, n).double()
    torch.testing.assert_close(ops_matrix, ref_kv.transform_matrix(kind, n), rtol=0, atol=1e-7)


@IMPLEMENTATIONS
def test_channel_split_takes_largest_ranges_ties_lower_nan_lowest(impl):
    k = torch.zeros(1, 2, 4, 6)
    k[0, 0, :, 0] = torch.tensor([0, 5, 0, 0.0])  # range 5
    k[0, 0, :, 3] = torch.tensor([0, 5, 0, 0.0])  # tie with channel 0
    k[0, 0, :, 4] = torch.tensor([0, 9, 0, 0.0])
    k[0, 1, :, 2] = torch.tensor([0, 1, 0, 0.0])
    k[0, 1, :, 5] = float("nan")
    split = impl.key_channel_split(k, 2)
    assert split.tolist() == [[0, 4], [0, 2]]


# ---- quantizers: ops (kernels) against the reference ----------------------------------------

KEY_CONFIGS = [
    KVQuantConfig(key_bits=1.5, key_transform="fft"),
    KVQuantConfig(key_bits=1.5, key_transform="hadamard"),
    KVQuantConfig(key_bits=1.5, key_transform="none"),
    KVQuantConfig(key_bits=2.0, value_bits=2),
    KVQuantConfig(key_bits=1.0, key_transform="fft"),
    KVQuantConfig(key_bits=1.25, group_size=8, residual_length=0, scale_dtype="bfloat16"),
    KVQuantConfig(key_bits=1.5, scale_dtype="float8_e4m3fn"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", KEY_CONFIGS, ids=lambda c: f"{c.key_bits}-{c.key_transform}")
@pytest.mark.parametrize("tokens", [1, 33, 96])
def test_quantize_keys_matches_reference(device, config, tokens):
    dim = 16
    k = outlier_kv(tokens=tokens, dim=dim).to(device)
    got = ops.quantize_keys(k, config)
    want = ref_kv.quantize_keys(k.cpu(), config)
    # The float64 oracle: statistics within a unit of the stored dtype, codes equal except on a
    # decision boundary (within float32 rounding).
    assert keys_problem(k, got, want) is None
    assert got.shape == tuple(k.shape)
    restored = ops.dequantize_keys(got)
    assert restored.dtype == k.dtype and restored.shape == k.shape
    torch.testing.assert_close(
        restored.cpu(), ref_kv.dequantize_keys(want), rtol=2e-2, atol=1e-3 * k.abs().max().item()
    )


def test_two_bit_keys_dequantize_with_the_stored_statistics():
    cfg = KVQuantConfig(key_bits=2.0, value_bits=2, group_size=8)
    k = outlier_kv(tokens=24, dim=8)
    packed = ref_kv.quantize_keys(k, cfg)
    codes = kv_pack.unpack_bits(packed.codes2, 2, 8).double()
    groups = torch.arange(24) // 8
    expected = codes * packed.scale2.double()[:, :, groups] + packed.zero2.double()[:, :, groups]
    assert torch.equal(ref_kv.exact_keys(packed), expected)
    assert torch.equal(ref_kv.dequantize_keys(packed), expected.float())
    assert torch.equal(ops.dequantize_keys(packed), expected.float())
    assert packed.channel_split is None  # implied: every channel at 2 bits, nothing stored


def test_one_bit_keys_are_signs_of_the_transform_times_alpha():
    cfg = KVQuantConfig(key_bits=1.0, key_transform="fft", group_size=4)
    k = outlier_kv(batch=1, heads=1, tokens=8, dim=6)
    packed = ref_kv.quantize_keys(k, cfg)
    y = k[0, 0].double() @ ref_kv.transform_matrix("fft", 6).T
    signs = kv_pack.unpack_bits(packed.codes1, 1, 6)[0, 0]
    assert torch.equal(signs.bool(), y >= 0)
    alpha = y.abs().reshape(2, 4, 6).mean(1)
    torch.testing.assert_close(packed.alpha1[0, 0].double(), alpha, rtol=1e-3, atol=0)


def test_quantize_keys_fixed_split_and_bad_splits():
    cfg = KVQuantConfig(key_bits=1.5)
    k = outlier_kv(tokens=40, dim=8)
    split = torch.tensor([[0, 1, 2, 3]] * 3)
    packed = ops.quantize_keys(k, cfg, channel_split=split)
    assert torch.equal(packed.channels2, split) and packed.channel_split.dtype == torch.int16
    assert packed.channels1.tolist() == [[4, 5, 6, 7]] * 3
    with pytest.raises(ValueError, match=r"\[H, D2\]"):
        ops.quantize_keys(k, cfg, channel_split=split[:, :3])
    with pytest.raises(ValueError, match="repeat"):
        ops.quantize_keys(k, cfg, channel_split=torch.tensor([[0, 0, 1, 2]] * 3))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        ops.quantize_keys(k, cfg, channel_split=torch.tensor([[0, 1, 2, 9]] * 3))
    with pytest.raises(ValueError, match="int64"):
        ops.quantize_keys(k, cfg, channel_split=split.int())


def test_quantize_rejects_bad_tensors_and_unquantized_configs():
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        ops.quantize_keys(torch.randn(3, 4, 5), KVQuantConfig())
    with pytest.raises(TypeError, match="float32"):
        ops.quantize_values(torch.ones(1, 1, 4, 4, dtype=torch.int32), KVQuantConfig())
    with pytest.raises(ValueError, match="key_bits is 16"):
        ops.quantize_keys(torch.randn(1, 1, 4, 4), KVQuantConfig(key_bits=16))
    with pytest.raises(ValueError, match="value_bits is 16"):
        ops.quantize_values(torch.randn(1, 1, 4, 4), KVQuantConfig(value_bits=16))


VALUE_CONFIGS = [
    KVQuantConfig(value_bits=2, value_axis="channel"),
    KVQuantConfig(value_bits=2, value_axis="token", group_size=8, residual_length=0),
    KVQuantConfig(value_bits=1.58),
    KVQuantConfig(value_bits=1.58, scale_dtype="float8_e4m3fn"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", VALUE_CONFIGS, ids=lambda c: f"{c.value_bits}-{c.value_axis}")
@pytest.mark.parametrize("tokens", [1, 33, 96])
def test_quantize_values_matches_reference(device, config, tokens):
    v = outlier_kv(tokens=tokens, dim=12, seed=1).to(device)
    got = ops.quantize_values(v, config)
    want = ref_kv.quantize_values(v.cpu(), config)
    assert values_problem(v, got, want) is None
    restored = ops.dequantize_values(got)
    assert restored.shape == v.shape and restored.dtype == v.dtype


def test_trit_thresholds_and_scale():
    cfg = KVQuantConfig(value_bits=1.58, group_size=4)
    v = torch.tensor([1.0, -1.0, 0.1, 2.0]).view(1, 1, 4, 1)  # gamma = 1.025
    packed = ref_kv.quantize_values(v, cfg)
    trits = kv_pack.unpack_trits(packed.codes, 1).flatten().tolist()
    assert trits == [1, -1, 0, 1]
    restored = ref_kv.dequantize_values(packed).flatten()
    gamma = packed.scale.float().item()
    assert restored.tolist() == [gamma, -gamma, 0.0, gamma]


def test_salient_values_use_their_own_two_bit_groups():
    cfg = KVQuantConfig(value_bits=1.58, group_size=4, salient_ratio=0.2)
    v = outlier_kv(batch=2, heads=1, tokens=10, dim=5, seed=3)
    salient = torch.zeros(2, 10, dtype=torch.bool)
    salient[0, [1, 7]] = True
    salient[1, [0, 9]] = True
    packed = ref_kv.quantize_values(v, cfg, salient=salient)
    assert packed.salient_index.tolist() == [[1, 7], [0, 9]]
    assert packed.codes.shape[2] == 8 and packed.salient_codes.shape[2] == 2
    restored = ref_kv.dequantize_values(packed)
    # Two salient tokens per sample form one 2-bit group: min and max are exact.
    for row, cols in enumerate(([1, 7], [0, 9])):
        picked = v[row, 0, cols]
        exact = (restored[row, 0, cols] == picked) | (
            (restored[row, 0, cols] - picked).abs() <= 1e-3 * picked.abs().max()
        )
        assert bool(exact.all())
    got = ops.quantize_values(v, cfg, salient=salient)
    assert torch.equal(got.salient_index, packed.salient_index)
    assert torch.equal(got.salient_codes, packed.salient_codes)
    with pytest.raises(ValueError, match="same number"):
        bad = salient.clone()
        bad[0, 3] = True
        ops.quantize_values(v, cfg, salient=bad)
    with pytest.raises(ValueError, match=r"value_bits=1\.58"):
        ops.quantize_values(v, KVQuantConfig(value_bits=2), salient=salient)
    with pytest.raises(TypeError, match="bool"):
        ops.quantize_values(v, cfg, salient=torch.tensor([1, 7]))


def test_nbytes_is_the_sum_of_the_stored_tensors():
    cfg = KVQuantConfig(key_bits=1.5, group_size=8)
    k = outlier_kv(tokens=32, dim=16)
    keys = ops.quantize_keys(k, cfg)
    stored = [keys.codes2, keys.scale2, keys.zero2, keys.codes1, keys.alpha1, keys.channel_split]
    assert keys.nbytes == sum(t.numel() * t.element_size() for t in stored)
    values = ops.quantize_values(k, cfg)
    assert values.nbytes == sum(t.numel() * t.element_size() for t in (values.codes, values.scale))


def test_public_names():
    assert vidllm_ext.PackedKeys is reference.kv_quant.PackedKeys
    assert callable(ops.quantize_keys) and callable(ops.dequantize_values)


def test_the_oracle_comparison_catches_wrong_codes_and_statistics():
    k = outlier_kv(tokens=33, dim=16)
    v = outlier_kv(tokens=33, dim=16, seed=1)
    config = KVQuantConfig(key_bits=1.5, value_bits=2, group_size=8)
    keys, values = ops.quantize_keys(k, config), ops.quantize_values(v, config)
    assert keys_problem(k, keys, ref_kv.quantize_keys(k, config)) is None
    flipped = keys.codes1.clone()
    flipped[0, 0, 5, 0] ^= 1  # one sign, far from any boundary on this data
    assert "codes1" in keys_problem(k, dataclasses.replace(keys, codes1=flipped), keys)
    scaled = (keys.scale2.float() * 1.01).to(keys.scale2.dtype)
    assert "scale2" in keys_problem(k, dataclasses.replace(keys, scale2=scaled), keys)
    shifted = values.codes.clone()
    shifted[1, 2, 7, 3] ^= 0b11
    assert "codes" in values_problem(v, dataclasses.replace(values, codes=shifted), values)
