"""Every bad argument of the KV packing ops and quantizers gets a clear Python exception, from the
ops, the reference and vidllm_ext._C itself."""

import math

import numpy as np
import pytest
import torch
from conftest import gpu_only

from vidllm_ext import _C, ops, reference
from vidllm_ext.ops import kv_quant_pack as kv_ops
from vidllm_ext.reference import kv_quant_pack as kv_ref

IMPLS = [kv_ops, kv_ref]
IDS = ["ops", "reference"]
CODES = torch.zeros(3, 10, dtype=torch.uint8)
TRITS = torch.zeros(3, 10, dtype=torch.int8)
X = torch.randn(6, 9, 8)


@pytest.mark.parametrize("impl", [ops, reference], ids=IDS)
@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda m: m.pack_bits([1, 2], 2), TypeError, "codes: expected a torch.Tensor"),
        (lambda m: m.pack_bits(CODES.to(torch.int8), 2), TypeError, "codes: expected dtype"),
        (lambda m: m.pack_bits(torch.tensor(1, dtype=torch.uint8), 2), ValueError, "0-D"),
        (lambda m: m.pack_bits(CODES, 3), ValueError, "bits: expected 1 or 2, got 3"),
        (lambda m: m.pack_bits(CODES, 2.0), TypeError, "bits: expected an int"),
        (lambda m: m.pack_bits(CODES, True), TypeError, "bits: expected an int"),
        (lambda m: m.unpack_bits(CODES, 2, 10), ValueError, "packed: expected 3 bytes"),
        (lambda m: m.unpack_bits(CODES[:, :3], 2, -1), ValueError, "n: expected an int >= 0"),
        (lambda m: m.unpack_bits(CODES[:, :3], 2, 10.0), TypeError, "n: expected an int"),
        (lambda m: m.unpack_bits(TRITS[:, :3], 2, 10), TypeError, "packed: expected dtype"),
        (lambda m: m.pack_trits(CODES), TypeError, "trits: expected dtype torch.int8"),
        (lambda m: m.unpack_trits(CODES[:, :3], 10), ValueError, "packed: expected 2 bytes"),
    ],
)
def test_bad_pack_arguments(impl, call, error, message):
    with pytest.raises(error, match=message):
        call(impl)


def channels(*rows):
    return torch.tensor(rows, dtype=torch.int64)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(x=torch.randn(6, 8)), ValueError, "x: expected a 3-D tensor"),
        (dict(x=torch.ones(6, 9, 8, dtype=torch.int32)), TypeError, "x: expected dtype"),
        (dict(x="x"), TypeError, "x: expected a torch.Tensor"),
        (dict(mode="int4"), ValueError, "mode: expected 'minmax2' or 'sign1' or 'trit'"),
        (dict(group_size=0), ValueError, "group_size: expected an integer in"),
        (dict(group_size=2**31), ValueError, "group_size: expected an integer in"),
        (dict(group_size=4.0), TypeError, "group_size: expected an int"),
        (dict(channels=channels([0, 1]).float()), TypeError, "channels: expected dtype"),
        (dict(channels=torch.arange(3)), ValueError, r"channels: expected a 2-D tensor"),
        (dict(channels=channels([0], [1], [2], [3])), ValueError, "divides the 6 rows"),
        (dict(channels=torch.empty(0, 2, dtype=torch.int64)), ValueError, "divides the 6 rows"),
        (dict(channels=channels([0, 8])), ValueError, r"indices in \[0, 8\).*got 8 at \[0, 1\]"),
        (dict(channels=channels([0, 1], [-1, 2])), ValueError, r"got -1 at \[1, 0\]"),
    ],
)
def test_bad_quantize_channel_groups_arguments(impl, kwargs, error, message):
    args = dict(x=X, mode="minmax2", group_size=4, channels=None)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        impl.quantize_channel_groups(**args)


QUANTIZED = kv_ref.quantize_channel_groups(X, "minmax2", 4)
MAPPED = kv_ref.quantize_channel_groups(X, "sign1", 4, channels([0, 2, 5]))


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(scale=QUANTIZED[1].half()), TypeError, "scale: expected dtype torch.float32"),
        (dict(scale=QUANTIZED[1][:, :2]), ValueError, r"scale: expected shape \[6, 3, 8\]"),
        (dict(scale=QUANTIZED[1][0]), ValueError, "scale: expected a 3-D tensor"),
        (dict(zero=None), TypeError, "zero: expected a torch.Tensor"),
        (dict(zero=QUANTIZED[2][..., :3]), ValueError, r"zero: expected shape \[6, 3, 8\]"),
        (dict(codes=QUANTIZED[0][..., :1]), ValueError, r"codes: expected .*\[rows, tokens, 2\]"),
        (dict(codes=QUANTIZED[0].char()), TypeError, "codes: expected dtype torch.uint8"),
        (dict(n_channels=9), ValueError, "n_channels: expected 8"),
        (dict(group_size=5), ValueError, r"scale: expected shape \[6, 2, 8\]"),
        (dict(mode="sign2"), ValueError, "mode: expected"),
        (dict(out=torch.empty(6, 9, 7)), ValueError, r"out: expected shape \[6, 9, 8\]"),
        (dict(out=torch.empty(6, 9, 8, dtype=torch.int32)), TypeError, "out: expected dtype"),
        (dict(dtype=torch.int8), TypeError, "dtype: expected torch.float32"),
        (dict(channels=channels([0, 1])), ValueError, "channels: expected 8 columns"),
    ],
)
def test_bad_dequantize_channel_groups_arguments(impl, kwargs, error, message):
    codes, scale, zero = QUANTIZED
    args = dict(codes=codes, scale=scale, zero=zero, mode="minmax2", group_size=4, n_channels=8)
    args.update(kwargs)
    positional = [args.pop(name) for name in ("codes", "scale", "zero", "mode", "group_size")]
    with pytest.raises(error, match=message):
        impl.dequantize_channel_groups(*positional, args.pop("n_channels"), **args)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_mapped_dequantize_checks_the_map(impl):
    codes, scale, zero = MAPPED
    with pytest.raises(ValueError, match="distinct channels in each row, got 2 twice in row 0"):
        impl.dequantize_channel_groups(
            codes, scale, zero, "sign1", 4, 8, channels=channels([2, 0, 2])
        )
    with pytest.raises(ValueError, match=r"indices in \[0, 5\) \(the channels of out\)"):
        impl.dequantize_channel_groups(
            codes, scale, zero, "sign1", 4, 5, channels=channels([0, 2, 5])
        )
    with pytest.raises(ValueError, match=r"zero: expected shape \[6, 3, 0\]"):
        impl.dequantize_channel_groups(
            codes, scale, scale, "sign1", 4, 8, channels=channels([0, 2, 5])
        )


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_bad_token_group_arguments(impl):
    with pytest.raises(ValueError, match="x: expected a 3-D tensor"):
        impl.quantize_token_groups(X[None], 4)
    with pytest.raises(ValueError, match="group_size: expected an integer in"):
        impl.quantize_token_groups(X, 0)
    codes, scale, zero = kv_ref.quantize_token_groups(X, 3)
    with pytest.raises(ValueError, match=r"scale: expected shape \[6, 9, 3\]"):
        impl.dequantize_token_groups(codes, scale[..., :2], zero, 3, 8)
    with pytest.raises(ValueError, match=r"codes: expected .*\[rows, tokens, 3\]"):
        impl.dequantize_token_groups(codes, scale, zero, 3, 9)
    with pytest.raises(TypeError, match=r"zero: expected dtype torch\.float32"):
        impl.dequantize_token_groups(codes, scale, zero.double(), 3, 8)


def dlpack(tensor):
    return torch.utils.dlpack.to_dlpack(tensor)


def test_pack_bindings_check_arguments_themselves():
    invalid = torch.empty(1, dtype=torch.int64)
    with pytest.raises(TypeError, match="codes: expected dtype int8, got uint8"):
        _C.kv_quant_pack(CODES, torch.empty(3, 2, dtype=torch.uint8), invalid, "trits")
    with pytest.raises(ValueError, match=r"packed: expected size 3 in dimension 1"):
        _C.kv_quant_pack(CODES, torch.empty(3, 2, dtype=torch.uint8), invalid, "bits2")
    with pytest.raises(ValueError, match="packing: expected 'bits1' or 'bits2' or 'trits'"):
        _C.kv_quant_pack(CODES, torch.empty(3, 2, dtype=torch.uint8), invalid, "bits3")
    with pytest.raises(TypeError, match="invalid: expected dtype int64, got int32"):
        _C.kv_quant_pack(CODES, torch.empty(3, 3, dtype=torch.uint8), invalid.int(), "bits2")
    with pytest.raises(ValueError, match="packed: expected a contiguous tensor"):
        _C.kv_quant_pack(CODES, torch.empty(3, 6, dtype=torch.uint8)[:, ::2], invalid, "bits2")
    with pytest.raises(ValueError, match="packed: expected the last dimension to be contiguous"):
        _C.kv_quant_unpack(torch.empty(3, 6, dtype=torch.uint8)[:, ::2], CODES, invalid, "bits2")
    with pytest.raises(TypeError, match="codes: expected a tensor"):
        _C.kv_quant_pack("codes", CODES, invalid, "bits2")


def test_group_bindings_check_arguments_themselves():
    codes, scale, zero = (t.clone() for t in QUANTIZED)
    with pytest.raises(ValueError, match="zero: expected a tensor for mode 'minmax2' and None"):
        _C.kv_quant_quantize_channel_groups(X, None, codes, scale, None, "minmax2", 4)
    with pytest.raises(ValueError, match="mode: expected 'minmax2' or 'sign1' or 'trit'"):
        _C.kv_quant_quantize_channel_groups(X, None, codes, scale, zero, "int4", 4)
    with pytest.raises(ValueError, match=r"group_size: expected an integer in \[1, 2147483647\]"):
        _C.kv_quant_quantize_channel_groups(X, None, codes, scale, zero, "minmax2", 0)
    with pytest.raises(ValueError, match=r"scale: expected size 2 in dimension 1"):
        _C.kv_quant_quantize_channel_groups(X, None, codes, scale, zero, "minmax2", 5)
    with pytest.raises(ValueError, match=r"channels: expected indices in \[0, 8\)"):
        _C.kv_quant_quantize_channel_groups(
            X, channels([0, 9]), codes[..., :1], scale[..., :2], zero[..., :2], "minmax2", 4
        )
    with pytest.raises(ValueError, match="channels: expected distinct channels"):
        _C.kv_quant_dequantize_channel_groups(
            codes[..., :1], scale[..., :2], zero[..., :2], channels([3, 3]), X.clone(), "minmax2", 4
        )
    with pytest.raises(ValueError, match="divides the 6 rows"):
        _C.kv_quant_dequantize_channel_groups(
            codes[..., :1],
            scale[..., :2],
            zero[..., :2],
            channels([0, 1], [2, 3], [4, 5], [6, 7]),
            X.clone(),
            "minmax2",
            4,
        )
    with pytest.raises(TypeError, match="out: expected dtype float32, float16 or bfloat16"):
        _C.kv_quant_dequantize_token_groups(codes, scale, zero, X.double(), 4)
    with pytest.raises(ValueError, match="out: expected a contiguous tensor"):
        _C.kv_quant_dequantize_token_groups(
            codes, scale[..., :2], zero[..., :2], X.transpose(0, 1), 4
        )


def test_bindings_accept_numpy_arrays():
    codes = np.random.default_rng(0).integers(0, 4, size=(3, 11), dtype=np.uint8)
    packed = np.zeros((3, 3), dtype=np.uint8)
    invalid = np.full(1, -1, dtype=np.int64)
    _C.kv_quant_pack(codes, packed, invalid, "bits2")
    assert invalid[0] == 0
    assert np.array_equal(packed, reference.pack_bits(torch.from_numpy(codes), 2).numpy())


@pytest.mark.cuda
@gpu_only
def test_cuda_out_of_range_channels_are_never_touched():
    """On CUDA the map is not read back (that would synchronize): an out-of-range channel gives
    NaN statistics and code 0 when quantizing and is skipped when dequantizing."""
    x = torch.randn(4, 20, 8, device="cuda")
    index = torch.tensor([[0, 100], [3, -5]], device="cuda")
    codes, scale, zero = kv_ops.quantize_channel_groups(x, "minmax2", 8, index)
    assert scale[:, :, 1].isnan().all() and not scale[:, :, 0].isnan().any()
    assert (ops.unpack_bits(codes, 2, 2)[..., 1] == 0).all()
    out = torch.full((4, 20, 8), math.nan, device="cuda")
    kv_ops.dequantize_channel_groups(codes, scale, zero, "minmax2", 8, 8, out=out, channels=index)
    assert out[::2, :, 0].isfinite().all() and out[1::2, :, 3].isfinite().all()
    assert out.isfinite().sum() == 4 * 20
