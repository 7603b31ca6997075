"""The KV group quantizers (vidllm_ext.ops.kv_quant_pack) against the reference and a float64
oracle."""

import math

import pytest
import torch
from conftest import DEVICES, device_context
from support.helpers import FLOAT_DTYPES, assert_close_to_oracle, strided_view

from vidllm_ext import _C, ops
from vidllm_ext.ops import kv_quant_pack as kv
from vidllm_ext.ops._backend import dl, stream_of
from vidllm_ext.reference import kv_quant_pack as ref

MODES = ["minmax2", "sign1", "trit"]
# (rows, tokens, channels): odd sizes, one token, one channel, an empty token axis
SIZES = [(1, 1, 1), (2, 33, 7), (4, 257, 37), (3, 33, 127), (2, 0, 7), (1, 257, 1)]
GROUP_SIZES = [1, 5, 32]
# |x| within this relative distance of gamma / 2 may get another trit than the reference gives:
# the kernel's gamma (sequential float32 sum) and torch's may differ in their last bits.
TRIT_BAND = 1e-5


def kv_like(rows, tokens, channels, dtype, device, seed=0):
    """Random keys/values with outlier channels (per-channel scales from 0.1 to 30), no zeros."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.exp(
        torch.empty(channels).uniform_(math.log(0.1), math.log(30.0), generator=generator)
    )
    x = torch.randn(rows, tokens, channels, generator=generator) * scale + 0.1
    return x.to(dtype=dtype, device=device)


def channel_map(heads, count, channels, seed=0):
    """int64 [heads, count]: distinct random channels per head."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.randperm(channels, generator=generator)[:count] for _ in range(heads)]
    )


def assert_same_values(actual, expected):
    """Equal values with NaN in the same places (the sign of a zero and NaN payloads ignored)."""
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan = expected.isnan()
    assert torch.equal(actual.isnan(), nan), "NaN pattern differs"
    assert torch.equal(actual[~nan], expected[~nan])


def bits_of(tensor):
    """Integer view for bitwise comparisons (NaN payloads and zero signs included)."""
    view_dtype = {4: torch.int32, 2: torch.int16, 1: torch.uint8}[tensor.element_size()]
    return tensor.cpu().contiguous().view(view_dtype)


def mean_abs_float64(x, group_size, channels=None):
    """The float64 oracle of the mean-|x| statistics, [R, NG, C]."""
    values = x.double()
    if channels is not None:
        index = channels.repeat(x.shape[0] // channels.shape[0], 1)
        values = values.gather(2, index[:, None, :].expand(x.shape[0], x.shape[1], -1))
    rows, tokens, count = values.shape
    groups = -(-tokens // group_size)
    padded = torch.nn.functional.pad(values.abs(), (0, 0, 0, groups * group_size - tokens))
    sums = padded.view(rows, groups, group_size, count).sum(2)
    sizes = (tokens - torch.arange(groups) * group_size).clamp(max=group_size)
    return sums / sizes[:, None].double()


def trits_of(codes, count):
    return ops.unpack_trits(codes.cpu(), count).long()


def assert_trits_match_up_to_band(x, codes, expected_codes, expected_scale, group_size, channels):
    """Trits differ from the reference's only where |x| lies within TRIT_BAND of gamma / 2."""
    count = expected_scale.shape[2]
    differs = trits_of(codes, count) != trits_of(expected_codes, count)
    if not differs.any():
        return
    values = ref._select_channels(x.cpu(), channels)
    half = ref._per_token(expected_scale, group_size, values.shape[1]) / 2
    distance = (values.abs() - half).abs()
    assert (distance[differs] <= TRIT_BAND * half[differs]).all()
    assert differs.sum() <= max(3, differs.numel() // 1000), "too many band decisions"


def check_quantize(x, mode, group_size, channels=None):
    """Kernel vs reference: exact codes given the kernel's statistics; minmax2 statistics
    bitwise, mean statistics within float policy against float64; returns the kernel's outputs."""
    codes, scale, zero = kv.quantize_channel_groups(x, mode, group_size, channels)
    x_cpu = x.cpu()
    map_cpu = None if channels is None else channels.cpu()
    expected = ref.quantize_channel_groups(x_cpu, mode, group_size, map_cpu)
    assert codes.dtype == torch.uint8 and scale.dtype == zero.dtype == torch.float32
    for actual, wanted in zip((codes, scale, zero), expected):
        assert actual.shape == wanted.shape and actual.device == x.device
    own_codes = ref.channel_group_codes(x_cpu, mode, group_size, scale.cpu(), zero.cpu(), map_cpu)
    assert torch.equal(codes.cpu(), own_codes), "codes do not follow the kernel's own statistics"
    if mode == "minmax2":
        assert_same_values(scale, expected[1])
        assert_same_values(zero, expected[2])
        assert torch.equal(codes.cpu(), expected[0])
        return codes, scale, zero
    if scale.numel():
        oracle = mean_abs_float64(x_cpu, group_size, map_cpu)
        assert_close_to_oracle(scale, expected[1], oracle)
    if mode == "sign1":
        assert torch.equal(codes.cpu(), expected[0])
    else:
        assert_trits_match_up_to_band(x, codes, expected[0], expected[1], group_size, map_cpu)
    return codes, scale, zero


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows,tokens,channels", SIZES)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_channel_groups_match_reference(device, dtype, mode, rows, tokens, channels, group_size):
    x = kv_like(rows, tokens, channels, dtype, device, seed=tokens + channels)
    codes, scale, zero = check_quantize(x, mode, group_size)
    for out_dtype in FLOAT_DTYPES:
        actual = kv.dequantize_channel_groups(
            codes, scale, zero, mode, group_size, channels, dtype=out_dtype
        )
        expected = ref.dequantize_channel_groups(
            codes.cpu(), scale.cpu(), zero.cpu(), mode, group_size, channels, dtype=out_dtype
        )
        assert actual.dtype == out_dtype and actual.device == x.device
        assert_same_values(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("heads", [1, 2])
def test_channel_map_reads_and_writes_only_listed_channels(device, mode, heads):
    rows, tokens, channels, count = 4, 70, 37, 11
    x = kv_like(rows, tokens, channels, torch.bfloat16, device, seed=20)
    index = channel_map(heads, count, channels, seed=21).to(device)
    codes, scale, zero = check_quantize(x, mode, 32, index)
    assert scale.shape == (rows, 3, count)
    out = torch.full((rows, tokens, channels), math.nan, dtype=torch.float16, device=device)
    result = kv.dequantize_channel_groups(
        codes, scale, zero, mode, 32, channels, out=out, channels=index
    )
    assert result is out
    expected = torch.full_like(out, math.nan).cpu()
    ref.dequantize_channel_groups(
        codes.cpu(), scale.cpu(), zero.cpu(), mode, 32, channels, out=expected, channels=index.cpu()
    )
    assert_same_values(out, expected)
    written = torch.zeros(rows, channels, dtype=torch.bool)
    written.scatter_(1, index.cpu().repeat(rows // heads, 1), True)
    assert out.isnan().cpu().all(1).eq(~written).all(), "wrote outside the mapped channels"
    fresh = kv.dequantize_channel_groups(
        codes, scale, zero, mode, 32, channels, channels=index, dtype=torch.float16
    )
    assert torch.equal(fresh.cpu(), expected.nan_to_num(0.0)), "a new output is zero elsewhere"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dim", [1, 0, -1], ids=["token_stride", "row_stride", "channel_stride"])
def test_non_contiguous_inputs_and_outputs(device, mode, dim):
    x = strided_view(kv_like(6, 90, 40, torch.float16, device, seed=22), dim)
    quantized = kv.quantize_channel_groups(x, mode, 7)
    contiguous = kv.quantize_channel_groups(x.contiguous(), mode, 7)
    for actual, expected in zip(quantized, contiguous):
        assert torch.equal(actual, expected), "strides changed the result"
    expected = kv.dequantize_channel_groups(*contiguous, mode, 7, x.shape[2])
    for out in (
        torch.full((x.shape[1], x.shape[0], x.shape[2]), math.nan, device=device).transpose(0, 1),
        torch.full((*x.shape[:2], 2 * x.shape[2]), math.nan, device=device)[..., 1::2],
    ):
        kv.dequantize_channel_groups(*quantized, mode, 7, x.shape[2], out=out)
        assert torch.equal(out, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_and_inf_propagate_to_their_groups(device, mode, dtype):
    x = kv_like(2, 40, 9, torch.float32, "cpu", seed=23)
    x[0, 3, 2] = math.nan  # group 0 of channel 2 in row 0
    x[1, 17, :] = math.inf  # group 1 (tokens 16..31) of every channel in row 1
    x[1, 35, 4] = -math.inf
    x[0, 20, 6] = math.inf
    x = x.to(dtype=dtype, device=device)
    codes, scale, zero = check_quantize(x, mode, 16)
    assert scale.cpu()[0, 0, 2].isnan()
    expected = ref.quantize_channel_groups(x.cpu(), mode, 16)
    assert torch.equal(scale.cpu().isnan(), expected[1].isnan())
    assert torch.equal(scale.cpu().isinf(), expected[1].isinf())
    if mode != "minmax2":
        finite = scale.cpu().isfinite()
        assert torch.allclose(scale.cpu()[finite], expected[1][finite], rtol=1e-6)
    decoded = kv.dequantize_channel_groups(codes, scale, zero, mode, 16, 9, dtype=dtype)
    assert_same_values(
        decoded,
        ref.dequantize_channel_groups(
            codes.cpu(), scale.cpu(), zero.cpu(), mode, 16, 9, dtype=dtype
        ),
    )


# The NaN every kernel writes, by output dtype: CPU arithmetic keeps NaN payloads and signs that
# the GPU's does not, so the kernels canonicalize (CUDA == CPU bitwise relies on it).
CANONICAL_NAN_BITS = {torch.float32: 0x7FC00000, torch.float16: 0x7E00, torch.bfloat16: 0x7FC0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_results_are_canonical(device, mode, dtype):
    x = kv_like(2, 24, 6, torch.float32, "cpu", seed=34)
    x[0, 2, 1] = -math.nan  # negative NaN input: sign and payload must not leak
    x[1, 9, :3] = math.inf  # inf - inf, 0 * inf: the default NaNs of the hardware
    x[1, 10, :3] = -math.inf
    codes, scale, zero = kv.quantize_channel_groups(x.to(device), mode, 8)
    for stats in (scale, zero):
        nan = stats.isnan()
        assert (bits_of(stats)[nan.cpu()] == 0x7FC00000).all()
    assert scale.isnan().any()
    decoded = kv.dequantize_channel_groups(codes, scale, zero, mode, 8, 6, dtype=dtype)
    nan = decoded.isnan().cpu()
    assert nan.any()
    assert (bits_of(decoded)[nan].long() & 0xFFFFFFFF == CANONICAL_NAN_BITS[dtype]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_constant_groups_have_zero_scale_and_code_zero(device, dtype):
    x = torch.full((2, 8, 5), 1.25, dtype=dtype, device=device)
    codes, scale, zero = kv.quantize_channel_groups(x, "minmax2", 4)
    assert (scale == 0).all() and (zero == 1.25).all() and (codes == 0).all()
    decoded = kv.dequantize_channel_groups(codes, scale, zero, "minmax2", 4, 5, dtype=dtype)
    assert torch.equal(decoded, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_round_trip_error_is_bounded(device, mode):
    x = kv_like(3, 100, 64, torch.float32, device, seed=24)
    codes, scale, zero = kv.quantize_channel_groups(x, mode, 32)
    decoded = kv.dequantize_channel_groups(codes, scale, zero, mode, 32, 64).cpu()
    per_token = ref._per_token(scale.cpu(), 32, 100)
    x = x.cpu()
    if mode == "minmax2":
        assert ((decoded - x).abs() <= per_token / 2 * (1 + 1e-5) + 1e-6).all()
        assert torch.equal(
            torch.unique(ops.unpack_bits(codes.cpu(), 2, 64)), torch.arange(4).byte()
        )
    elif mode == "sign1":
        assert torch.equal(decoded, torch.where(x >= 0, per_token, -per_token))
    else:
        t = torch.where(x > per_token / 2, 1.0, torch.where(x < -per_token / 2, -1.0, 0.0))
        assert torch.equal(decoded, per_token * t)
        assert set(t.unique().tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rows,tokens,channels", SIZES)
@pytest.mark.parametrize("group_size", [1, 7, 32])
def test_token_groups_match_reference(device, dtype, rows, tokens, channels, group_size):
    x = kv_like(rows, tokens, channels, dtype, device, seed=25 + channels)
    codes, scale, zero = kv.quantize_token_groups(x, group_size)
    expected = ref.quantize_token_groups(x.cpu(), group_size)
    assert torch.equal(codes.cpu(), expected[0])
    assert_same_values(scale, expected[1])
    assert_same_values(zero, expected[2])
    for out_dtype in FLOAT_DTYPES:
        actual = kv.dequantize_token_groups(
            codes, scale, zero, group_size, channels, dtype=out_dtype
        )
        wanted = ref.dequantize_token_groups(
            codes.cpu(), scale.cpu(), zero.cpu(), group_size, channels, dtype=out_dtype
        )
        assert_same_values(actual, wanted)


@pytest.mark.parametrize("device", DEVICES)
def test_token_groups_hostile_and_strided_inputs(device):
    x = kv_like(3, 20, 45, torch.float32, "cpu", seed=26)
    x[0, 1, 3] = math.nan
    x[1, 2, 40:] = math.inf
    x[2, 5, 0] = -math.inf
    x = x.to(device)
    for view in (x, x[:, ::2], x.transpose(0, 1).contiguous().transpose(0, 1), x[..., ::3]):
        codes, scale, zero = kv.quantize_token_groups(view, 8)
        expected = ref.quantize_token_groups(view.cpu(), 8)
        assert torch.equal(codes.cpu(), expected[0])
        assert_same_values(scale, expected[1])
        assert_same_values(zero, expected[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_kernels_write_every_output(device, mode):
    """The bindings directly, outputs poisoned: codes 0xAB, statistics NaN."""
    x = kv_like(3, 41, 23, torch.bfloat16, device, seed=27)
    codes, scale, zero = ref.quantize_channel_groups(x.cpu(), mode, 8)
    got = [torch.full_like(t, 0xAB if t.dtype == torch.uint8 else math.nan) for t in (codes, scale)]
    got_zero = torch.full_like(zero, math.nan).to(device) if mode == "minmax2" else None
    got = [t.to(device) for t in got]
    _C.kv_quant_quantize_channel_groups(
        dl(x), None, dl(got[0]), dl(got[1]), dl(got_zero), mode, 8, stream_of(x)
    )
    assert not got[1].isnan().any() and (mode != "minmax2" or not got_zero.isnan().any())
    assert torch.equal(
        got[0].cpu(),
        ref.channel_group_codes(
            x.cpu(), mode, 8, got[1].cpu(), None if got_zero is None else got_zero.cpu()
        ),
    )
    token = [torch.full((3, 41, 6), 0xAB, dtype=torch.uint8, device=device)]
    token += [torch.full((3, 41, 3), math.nan, device=device) for _ in range(2)]
    _C.kv_quant_quantize_token_groups(dl(x), *(dl(t) for t in token), 8, stream_of(x))
    expected = ref.quantize_token_groups(x.cpu(), 8)
    assert all(torch.equal(a.cpu(), e) for a, e in zip(token, expected))


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_deterministic(device):
    x = kv_like(4, 257, 127, torch.bfloat16, device, seed=28)
    for mode in MODES:
        first = kv.quantize_channel_groups(x, mode, 32)
        decoded = kv.dequantize_channel_groups(*first, mode, 32, 127).view(torch.int32)
        for _ in range(2):
            again = kv.quantize_channel_groups(x, mode, 32)
            assert all(torch.equal(a, b) for a, b in zip(first, again))
            again_decoded = kv.dequantize_channel_groups(*again, mode, 32, 127)
            assert torch.equal(again_decoded.view(torch.int32), decoded)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mapped", [False, True])
def test_cuda_equals_cpu_bitwise(dtype, mode, mapped):
    x = kv_like(8, 300, 128, torch.float32, "cpu", seed=29)
    x[1, 5, 7] = math.nan
    x[2, 70, :] = math.inf
    x = x.to(dtype)
    index = channel_map(4, 37, 128, seed=30) if mapped else None
    results = {}
    for name in ("cpu", "cuda"):
        with device_context(name) as device:
            idx = None if index is None else index.to(device)
            quantized = kv.quantize_channel_groups(x.to(device), mode, 32, idx)
            out = torch.full((8, 300, 128), -3.0, dtype=dtype, device=device)
            kv.dequantize_channel_groups(*quantized, mode, 32, 128, out=out, channels=idx)
            token = kv.quantize_token_groups(x.to(device), 32)
            decoded = kv.dequantize_token_groups(*token, 32, 128)
            results[name] = [*quantized, out, *token, decoded]
    for cpu, cuda in zip(results["cpu"], results["cuda"]):
        assert torch.equal(bits_of(cpu), bits_of(cuda))


def test_opcheck_group_ops():
    x = kv_like(4, 19, 10, torch.float32, "cpu", seed=31)
    index = channel_map(2, 6, 10, seed=32)
    for mode in MODES:
        codes, scale, zero = kv.quantize_channel_groups(x, mode, 8, index)
        torch.library.opcheck(
            torch.ops.vidllm.quantize_channel_groups_out.default,
            (
                x,
                mode,
                8,
                index,
                torch.empty_like(codes),
                torch.empty_like(scale),
                torch.empty_like(zero),
            ),
        )
        zero_arg = zero if mode == "minmax2" else None
        torch.library.opcheck(
            torch.ops.vidllm.dequantize_channel_groups_out.default,
            (codes, scale, zero_arg, mode, 8, index, torch.zeros(4, 19, 10)),
        )
    codes, scale, zero = kv.quantize_token_groups(x, 4)
    torch.library.opcheck(
        torch.ops.vidllm.quantize_token_groups_out.default,
        (x, 4, torch.empty_like(codes), torch.empty_like(scale), torch.empty_like(zero)),
    )
    torch.library.opcheck(
        torch.ops.vidllm.dequantize_token_groups_out.default,
        (codes, scale, zero, 4, torch.empty(4, 19, 10)),
    )


def keys_round_trip(k, index):
    """A lead-like composition: a 2-bit part and a 1-bit part assembled into one output."""
    two_bit = kv.quantize_channel_groups(k, "minmax2", 8, index[:, :3])
    one_bit = kv.quantize_channel_groups(k, "sign1", 8, index[:, 3:])
    out = torch.empty_like(k)
    kv.dequantize_channel_groups(*two_bit, "minmax2", 8, 10, out=out, channels=index[:, :3])
    kv.dequantize_channel_groups(*one_bit, "sign1", 8, 10, out=out, channels=index[:, 3:])
    values = kv.quantize_token_groups(k, 4)
    return out, kv.dequantize_token_groups(*values, 4, 10, dtype=torch.bfloat16)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    k = kv_like(4, 19, 10, torch.float32, "cpu", seed=33)
    index = torch.stack([torch.randperm(10) for _ in range(2)])
    compiled = torch.compile(keys_round_trip, fullgraph=True)
    for actual, expected in zip(compiled(k, index), keys_round_trip(k, index)):
        assert torch.equal(actual, expected)
