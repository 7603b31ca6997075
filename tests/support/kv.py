"""KV tensors like real keys, cache configurations, and packed-structure equality (the KV scheme
tests)."""

import torch

from vidllm_ext import KVQuantConfig

# Configurations of the cache issue (section 6) at group sizes small enough for tests: the ones
# both the cache tests and the packed-attention tests run, each module adding its own.
KV_CONFIGS = {
    "kivi-2/2-token": KVQuantConfig(2, 2, group_size=8, residual_length=16, value_axis="token"),
    "2/2-channel": KVQuantConfig(2, 2, group_size=8, residual_length=16),
    "1.5/1.58": KVQuantConfig(1.5, 1.58, group_size=8, residual_length=16),
    "1.5/2-hadamard": KVQuantConfig(
        1.5, 2, group_size=8, residual_length=16, key_transform="hadamard"
    ),
    "1.5/2-none": KVQuantConfig(1.5, 2, group_size=8, residual_length=16, key_transform="none"),
    "1.5/1.58-fp8": KVQuantConfig(
        1.5, 1.58, group_size=8, residual_length=8, scale_dtype="float8_e4m3fn"
    ),
    "16/1.58": KVQuantConfig(16, 1.58, group_size=8, residual_length=16),
    "1.5/16": KVQuantConfig(1.5, 16, group_size=8, residual_length=0),
}


def outlier_kv(batch=2, heads=3, tokens=70, dim=16, seed=0, dtype=torch.float32):
    """Heavy-tailed KV with a few channels 10-50x larger, like real keys."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, tokens, dim)
    x = torch.randn(shape, generator=g) * (1 + torch.randn(shape, generator=g) ** 2)
    x[..., 1] *= 20
    x[..., dim - 2] *= 45
    return x.to(dtype)


def assert_packed_equal(got, want, stat_rtol):
    for name in ("codes2", "codes1", "codes", "salient_codes", "salient_index", "channel_split"):
        a, b = getattr(got, name, None), getattr(want, name, None)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a.cpu(), b.cpu()), name
    for name in ("scale2", "zero2", "alpha1", "scale", "zero", "salient_scale", "salient_zero"):
        a, b = getattr(got, name, None), getattr(want, name, None)
        if a is not None:
            torch.testing.assert_close(a.cpu().float(), b.cpu().float(), rtol=stat_rtol, atol=0)


# ---- ops (float32 kernels) against the float64 oracle ---------------------------------------
# A code may differ from the oracle's only where its input lies within float32 rounding of a
# decision boundary: a half step of a 2-bit code, zero for a sign, gamma / 2 for a trit.

BOUNDARY = 1e-5  # relative to the group's scale; float32 rounding is ~1e-7
# One unit in the last place of each statistics dtype: float32 and float64 statistics may round
# to neighbouring values where they sit at a tie.
STAT_RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float8_e4m3fn: 0.13}


def _group_view(x, group, axis):
    """x [B, H, T, C] -> list of (slice, values) groups of ``group`` along ``axis`` (2 or 3)."""
    size = x.shape[axis]
    return [slice(start, min(start + group, size)) for start in range(0, size, group)]


def minmax_margin(x, group, axis=2):
    """(margin, scale) [B, H, T, C]: distance of (x - m) / s to the nearest half step, in units
    of x, and the group's magnitude."""
    margin, scale = torch.full_like(x, float("inf")), torch.zeros_like(x)
    for part in _group_view(x, group, axis):
        index = (slice(None),) * axis + (part,)
        values = x[index]
        low, high = values.amin(axis, keepdim=True), values.amax(axis, keepdim=True)
        step = (high - low) / 3
        q = (values - low) / step
        distance = (q - q.floor() - 0.5).abs() * step
        margin[index] = torch.where(step > 0, distance, float("inf"))
        scale[index] = torch.maximum(high.abs(), low.abs()).expand_as(values)
    return margin, scale


def trit_margin(x, group):
    margin, scale = torch.empty_like(x), torch.empty_like(x)
    for part in _group_view(x, group, 2):
        values = x[:, :, part]
        gamma = values.abs().mean(2, keepdim=True)
        margin[:, :, part] = (values.abs() - gamma / 2).abs()
        scale[:, :, part] = gamma.expand_as(values)
    return margin, scale


def codes_problem(name, got_codes, want_codes, margin, scale) -> str | None:
    differ = got_codes.cpu() != want_codes.cpu()
    if not differ.any():
        return None
    near = margin[differ] <= BOUNDARY * scale[differ]
    if bool(near.all()):
        return None
    where = differ.nonzero()[int((~near).nonzero()[0])].tolist()
    return f"{name}: code differs from the oracle's away from a decision boundary at {where}"


def finite_magnitude(x) -> float:
    finite = x[torch.isfinite(x)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def stats_problem(got, want, names, atol=0.0) -> str | None:
    """Statistics within a unit of their dtype, or ``atol`` (float32 rounding of the input's
    magnitude: a statistic that is zero in exact arithmetic, like the mean |y| of a transformed
    constant, comes out as rounding noise from the kernels)."""
    for name in names:
        a, b = getattr(got, name, None), getattr(want, name, None)
        if (a is None) != (b is None):
            return f"{name}: {a is None} vs oracle {b is None}"
        if a is None:
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{name}: {a.dtype}{list(a.shape)} vs oracle {b.dtype}{list(b.shape)}"
        rtol = STAT_RTOL.get(a.dtype, 1e-5)
        a, b = a.cpu().double(), b.cpu().double()
        if not torch.allclose(a, b, rtol=rtol, atol=max(atol, 1e-30), equal_nan=True):
            return f"{name}: statistics differ from the oracle's beyond {rtol}"
    return None


def keys_problem(k, got, want) -> str | None:
    """Why ops.quantize_keys(k) ``got`` is not the oracle's ``want`` within rounding, or None."""
    from vidllm_ext.reference import kv_quant as oracle
    from vidllm_ext.reference import kv_quant_pack as layouts

    for name in ("channel_split", "head_dim", "transform", "group_size", "dtype"):
        a, b = getattr(got, name), getattr(want, name)
        same = torch.equal(a.cpu(), b.cpu()) if isinstance(a, torch.Tensor) else a == b
        if not same and not (a is None and b is None):
            return f"{name}: {a} vs oracle {b}"
    x, group = k.detach().cpu().double(), want.group_size
    atol = 1e-6 * finite_magnitude(x)
    problem = stats_problem(got, want, ("scale2", "zero2", "alpha1"), atol)
    if problem or want.shape[1] == 0:
        return problem
    two_bit, dim = want.two_bit_channels, want.head_dim
    if two_bit:
        index = want.channels2.cpu()[None, :, None, :].expand(*x.shape[:3], two_bit)
        x2 = torch.gather(x, 3, index)
        got2 = layouts.unpack_bits(got.codes2.cpu(), 2, two_bit)
        want2 = layouts.unpack_bits(want.codes2.cpu(), 2, two_bit)
        problem = codes_problem("codes2", got2, want2, *minmax_margin(x2, group))
        if problem:
            return problem
    if dim - two_bit:
        channels1 = want.channels1.cpu()
        x1 = torch.gather(x, 3, channels1[None, :, None, :].expand(*x.shape[:3], dim - two_bit))
        y = x1 @ oracle.transform_matrix(want.transform, dim - two_bit).T
        size = x1.abs().amax(3, keepdim=True).expand_as(y)
        got1 = layouts.unpack_bits(got.codes1.cpu(), 1, dim - two_bit)
        want1 = layouts.unpack_bits(want.codes1.cpu(), 1, dim - two_bit)
        return codes_problem("codes1", got1, want1, y.abs(), size)
    return None


def values_problem(v, got, want) -> str | None:
    """Why ops.quantize_values(v) ``got`` is not the oracle's ``want`` within rounding, or None."""
    from vidllm_ext.reference import kv_quant_pack as layouts

    for name in ("mode", "group_size", "head_dim", "dtype"):
        if getattr(got, name) != getattr(want, name):
            return f"{name}: {getattr(got, name)} vs oracle {getattr(want, name)}"
    x, group, dim = v.detach().cpu().double(), want.group_size, want.head_dim
    names = ("scale", "zero", "salient_scale", "salient_zero")
    problem = stats_problem(got, want, names, 1e-6 * finite_magnitude(x))
    if problem:
        return problem
    for name in ("salient_index",):
        a, b = getattr(got, name), getattr(want, name)
        if (a is None) != (b is None) or (a is not None and not torch.equal(a.cpu(), b.cpu())):
            return f"{name} differs from the oracle's"
    regular = x
    if want.salient_index is not None:
        rows = range(x.shape[0])
        salient = torch.stack([x[r][:, want.salient_index[r].cpu()] for r in rows])
        regular = torch.stack([x[r][:, want.regular_index[r].cpu()] for r in rows])
        got_s = layouts.unpack_bits(got.salient_codes.cpu(), 2, dim)
        want_s = layouts.unpack_bits(want.salient_codes.cpu(), 2, dim)
        problem = codes_problem("salient_codes", got_s, want_s, *minmax_margin(salient, group))
        if problem:
            return problem
    if want.mode == "trit":
        a, b = (layouts.unpack_trits(p.codes.cpu(), dim) for p in (got, want))
        return codes_problem("codes", a, b, *trit_margin(regular, group))
    a, b = (layouts.unpack_bits(p.codes.cpu(), 2, dim) for p in (got, want))
    axis = 3 if want.mode == "token2" else 2
    return codes_problem("codes", a, b, *minmax_margin(regular, group, axis))
