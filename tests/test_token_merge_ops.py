"""Bipartite soft matching, merge_wavg and unmerge kernels (through vidllm_ext.ops) against the
reference and float64 oracles."""

import math

import pytest
import torch
from conftest import DEVICES
from support.helpers import FLOAT_DTYPES
from support.token_merge import (
    SCORE_ROUNDING,
    assert_features_close,
    assert_plan_equal,
    assert_plan_matches_reference,
    bitwise,
    merge_oracle,
    random_metric,
)

from vidllm_ext import ops, reference

# (batch, tokens, channels): empty, T' < 2, odd and even T, odd widths, more than one tile of 64.
SIZES = [
    (1, 0, 7),
    (3, 1, 7),
    (2, 2, 1),
    (3, 7, 7),
    (1, 8, 64),
    (2, 64, 1),
    (3, 257, 64),
    (2, 258, 7),
]


def merge_counts(tokens, protected):
    """r values worth testing: none, one, half the cap, the cap, past the cap."""
    cap = max(tokens - protected, 0) // 2
    return sorted({0, min(1, cap), cap // 2, cap, cap + 5})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,tokens,channels", SIZES)
@pytest.mark.parametrize("protected", ["none", "one", "all"])
def test_matching_matches_reference(device, dtype, batch, tokens, channels, protected):
    protected = {"none": 0, "one": min(1, tokens), "all": tokens}[protected]
    metric = random_metric(batch, tokens, channels, dtype, device, seed=tokens + channels)
    for r in merge_counts(tokens, protected):
        plan = ops.bipartite_soft_matching(metric, r, protected=protected)
        expected = reference.bipartite_soft_matching(metric.cpu(), r, protected=protected)
        assert plan.r == min(r, max(tokens - protected, 0) // 2) == expected.r
        assert plan.slot.device == metric.device and plan.score.dtype == torch.float32
        assert_plan_matches_reference(plan, expected, metric)


@pytest.mark.parametrize("device", DEVICES)
def test_matching_order_and_slots_by_hand(device):
    # Protected token 0; A = tokens 1, 3, 5; B = tokens 2, 4, 6. Unit vectors: A0 -> B1 (cos 1),
    # A1 -> B2 (cos 1), A2 -> B0 (cos 0.96): A0 and A1 tie at exactly 1.
    metric = torch.tensor(
        [[[1, 0], [0, 1], [0.6, 0.8], [1, 0], [0, 1], [0.8, 0.6], [1, 0]]], device=device
    )
    plan = ops.bipartite_soft_matching(metric, 2, protected=1)
    assert plan.partner.tolist() == [[1, 2, 0]]
    assert plan.score[0, :2].tolist() == [1.0, 1.0] and abs(plan.score[0, 2] - 0.96) < 1e-6
    # r = 2: A0 and A1 merge; survivors 0, 2, 4, 5, 6 take slots 0..4.
    assert plan.slot.tolist() == [[0, 2, 1, 4, 2, 3, 4]]
    assert plan.kept_index.tolist() == [[0, 2, 4, 5, 6]]
    assert plan.source_offsets.tolist() == [[0, 0, 0, 1, 1, 2]]
    assert plan.source_index.tolist() == [[1, 3]]
    expected = reference.bipartite_soft_matching(metric.cpu(), 2, protected=1)
    assert_plan_equal(plan, expected, SCORE_ROUNDING)
    # r = 1: of the tie, the lower index (A0, token 1) merges.
    plan = ops.bipartite_soft_matching(metric, 1, protected=1)
    assert plan.slot.tolist() == [[0, 3, 1, 2, 3, 4, 5]]
    assert plan.source_offsets.tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert plan.source_index.tolist() == [[1]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_exact_ties_go_to_the_lower_index(device, dtype):
    # Integer metrics: every similarity is exact, so ties are real ties on every device.
    generator = torch.Generator().manual_seed(3)
    metric = torch.randint(-2, 3, (4, 41, 3), generator=generator).to(dtype)
    metric[0] = 1  # one row of identical tokens: every similarity is 1
    metric = metric.to(device)
    for r in (0, 5, 20):
        plan = ops.bipartite_soft_matching(metric, r)
        expected = reference.bipartite_soft_matching(metric.cpu(), r)
        assert_plan_equal(plan, expected, SCORE_ROUNDING)
        assert (plan.partner[0] == 0).all(), "ties: the lowest B index"
        if r:
            assert plan.source_index[0].tolist() == list(range(0, 2 * r, 2)), "lowest A first"


def duplicate_metrics(dtype, device):
    """(name, metric) with exact duplicates: every similarity between equal tokens is exactly 1
    in the kernels and the reference, so plans are decided by the tie rule alone."""
    generator = torch.Generator().manual_seed(21)
    yield "repeated-row", torch.randn(2, 1, 5, generator=generator).expand(2, 23, 5)
    yield "repeated-pattern", torch.randn(3, 7, 4, generator=generator).repeat(1, 5, 1)
    yield "constant", torch.full((2, 17, 33), 0.3)
    mixed = torch.randn(2, 40, 9, generator=generator)
    mixed[:, 20:] = mixed[:, :20]  # every token has an exact duplicate 20 positions on
    yield "mixed", mixed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("protected", [0, 1])
def test_duplicate_tokens_plan_equals_reference(device, dtype, protected):
    for name, metric in duplicate_metrics(dtype, device):
        metric = metric.to(dtype=dtype, device=device)
        for r in merge_counts(metric.shape[1], protected):
            plan = ops.bipartite_soft_matching(metric, r, protected=protected)
            expected = reference.bipartite_soft_matching(metric.cpu(), r, protected=protected)
            assert_plan_equal(plan, expected, SCORE_ROUNDING)
            assert torch.equal(plan.score.cpu() == 1.0, expected.score == 1.0), name
        if name in ("repeated-row", "constant"):  # all tokens equal: every score is exactly 1
            assert (plan.score == 1.0).all() and (plan.partner == 0).all(), name
            lowest_a_first = list(range(protected, protected + 2 * plan.r, 2))
            assert plan.source_index.tolist() == [lowest_a_first] * 2, name


@pytest.mark.parametrize("device", DEVICES)
def test_huge_norms(device):
    """Squared norms near 1e37: their product overflows float32, the cosine must not (both are
    scaled by 2^-64 first); a squared norm past float32's range gives NaN."""
    metric = random_metric(2, 33, 16, device=device, seed=22) * 1e18
    for r in (0, 8, 16):
        plan = ops.bipartite_soft_matching(metric, r)
        expected = reference.bipartite_soft_matching(metric.cpu(), r)
        assert plan.score.isfinite().all()
        assert_plan_matches_reference(plan, expected, metric)
    metric[0, 4] = 1e20  # an A token (index 2): its score is NaN
    plan = ops.bipartite_soft_matching(metric, 0)
    expected = reference.bipartite_soft_matching(metric.cpu(), 0)
    assert plan.score[0, 2].isnan() and expected.score[0, 2].isnan()
    assert plan.score.isnan().sum() == 1 and expected.score.isnan().sum() == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_and_inf_metrics(device, dtype):
    metric = random_metric(3, 61, 16, seed=5)
    metric[0, 4] = math.nan  # an A token: its score is NaN, ranked last
    metric[0, 7, 3] = math.nan  # a B token: never the best of anyone
    metric[1, ::2] = math.nan  # every A token of row 1
    metric[2, 10, 0] = math.inf
    metric[2, 13] = -math.inf
    metric = metric.to(dtype=dtype, device=device)
    for r in (0, 3, 30):
        plan = ops.bipartite_soft_matching(metric, r)
        expected = reference.bipartite_soft_matching(metric.cpu(), r)
        assert_plan_matches_reference(plan, expected, metric)
        assert plan.score[0, 2].isnan() and plan.score[1].isnan().all()
        assert (plan.partner[1] == 0).all(), "all-NaN rows pick B token 0"
        assert not (plan.partner[0] == 3).any(), "a NaN B token is never chosen"
        if r == 3:
            assert 4 not in plan.source_index[0].tolist(), "a NaN score merges last"


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_independent(device):
    metric = random_metric(5, 33, 24, device=device, seed=6)
    plan = ops.bipartite_soft_matching(metric, 9, protected=2)
    for row in range(5):
        single = ops.bipartite_soft_matching(metric[row : row + 1], 9, protected=2)
        for a, b in zip(plan[:6], single[:6]):
            assert torch.equal(bitwise(a[row : row + 1]), bitwise(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,tokens,dim", SIZES)
@pytest.mark.parametrize("sized", [False, True])
def test_merge_wavg_matches_oracle(device, dtype, batch, tokens, dim, sized):
    metric = random_metric(batch, tokens, 8, device=device, seed=7)
    x = random_metric(batch, tokens, dim, dtype, device, seed=8)
    generator = torch.Generator().manual_seed(9)
    size = torch.randint(1, 6, (batch, tokens), generator=generator).float().to(device)
    size = size if sized else None
    for r in merge_counts(tokens, 1 if tokens else 0):
        plan = ops.bipartite_soft_matching(metric, r, protected=1 if tokens else 0)
        merged, merged_size = ops.merge_wavg(plan, x, size)
        assert merged.dtype == dtype and merged.shape == (batch, tokens - plan.r, dim)
        assert merged_size.dtype == torch.float32 and merged_size.shape == merged.shape[:2]
        cpu_plan = plan._replace(**{k: getattr(plan, k).cpu() for k in plan._fields[:6]})
        expected, expected_size = reference.merge_wavg(
            cpu_plan, x.cpu(), None if size is None else size.cpu()
        )
        oracle, oracle_size = merge_oracle(cpu_plan, x, size)
        assert torch.equal(merged_size.cpu(), expected_size), "integer sizes add up exactly"
        assert torch.equal(merged_size.cpu().double(), oracle_size)
        assert_features_close(merged.cpu(), expected, oracle)
        untouched = cpu_plan.source_offsets.diff(dim=1) == 0
        kept = x.cpu().gather(1, cpu_plan.kept_index[..., None].expand(-1, -1, dim))
        assert torch.equal(bitwise(merged.cpu()[untouched]), bitwise(kept[untouched]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_to_16_bit_matches_torch(device, dtype):
    """Pairs merged into their mean: kernel and torch compute the same float32 value, so the
    output is torch's own rounding of it. Random bit patterns cover subnormals, overflow, NaN and
    inf; neighbouring values give exact midpoints (ties to even)."""
    generator = torch.Generator().manual_seed(10)
    bits = torch.randint(-(2**15), 2**15, (8192, 2, 16), generator=generator, dtype=torch.int16)
    bits[4096:, 1] = bits[4096:, 0] + 1  # neighbours: their mean is a midpoint
    x = bits.view(dtype)
    plan = ops.bipartite_soft_matching(torch.randn(8192, 2, 4, generator=generator).to(device), 1)
    merged, size = ops.merge_wavg(plan, x.to(device))
    expected = ((x[:, 0].float() + x[:, 1].float()) / 2).to(dtype)
    actual = merged[:, 0].cpu()
    assert (size == 2).all()
    assert torch.equal(actual.isnan(), expected.isnan())
    finite = ~expected.isnan()
    assert torch.equal(bitwise(actual[finite]), bitwise(expected[finite]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_merge_then_unmerge(device, dtype):
    metric = random_metric(2, 100, 16, device=device, seed=11)
    x = random_metric(2, 100, 48, dtype, device, seed=12)
    plan = ops.bipartite_soft_matching(metric, 40, protected=3)
    merged, size = ops.merge_wavg(plan, x)
    restored = ops.unmerge(plan, merged)
    assert restored.shape == x.shape and restored.dtype == dtype
    cpu_plan = plan._replace(**{k: getattr(plan, k).cpu() for k in plan._fields[:6]})
    assert torch.equal(bitwise(restored), bitwise(reference.unmerge(cpu_plan, merged.cpu())))
    # A token alone in its slot comes back bitwise; the members of a group share its mean.
    members = torch.zeros(2, 60, dtype=torch.int64).scatter_add(
        1, cpu_plan.slot, torch.ones(2, 100, dtype=torch.int64)
    )
    assert torch.equal(members.float(), size.cpu())
    alone = members.gather(1, cpu_plan.slot) == 1
    assert alone[:, :3].all(), "protected tokens are never merged"
    assert torch.equal(bitwise(restored.cpu()[alone]), bitwise(x.cpu()[alone]))


@pytest.mark.parametrize("device", DEVICES)
def test_r_zero_is_the_identity(device):
    metric = random_metric(2, 9, 4, device=device, seed=13)
    x = random_metric(2, 9, 5, torch.bfloat16, device, seed=14)
    plan = ops.bipartite_soft_matching(metric, 0)
    assert plan.slot.tolist() == [list(range(9))] * 2
    assert plan.kept_index.tolist() == [list(range(9))] * 2
    assert plan.source_index.shape == (2, 0) and not plan.source_offsets.any()
    merged, size = ops.merge_wavg(plan, x)
    assert torch.equal(bitwise(merged), bitwise(x)) and (size == 1).all()
    assert torch.equal(bitwise(ops.unmerge(plan, merged)), bitwise(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["token_stride", "batch_stride", "last_dim_stride"])
def test_non_contiguous_inputs(device, layout):
    metric = random_metric(4, 90, 32, device=device, seed=15)
    x = random_metric(4, 90, 64, torch.float16, device, seed=16)
    if layout == "token_stride":
        metric, x = metric[:, ::2], x[:, ::2]
    elif layout == "batch_stride":
        metric = metric.transpose(0, 1).contiguous().transpose(0, 1)
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    else:
        metric, x = metric[..., ::2], x[..., ::2]
    tokens = x.shape[1]
    generator = torch.Generator().manual_seed(17)
    size = torch.randint(1, 4, (4, 2 * tokens), generator=generator).float().to(device)[:, ::2]
    plan = ops.bipartite_soft_matching(metric, 17, protected=1)
    contiguous = ops.bipartite_soft_matching(metric.contiguous(), 17, protected=1)
    for a, b in zip(plan[:6], contiguous[:6]):
        assert torch.equal(bitwise(a), bitwise(b)), "strides changed the plan"
    merged = ops.merge_wavg(plan, x, size)
    for a, b in zip(merged, ops.merge_wavg(plan, x.contiguous(), size.contiguous())):
        assert torch.equal(bitwise(a), bitwise(b)), "strides changed the merge"
    strided = merged[0].transpose(0, 1).contiguous().transpose(0, 1)
    restored = ops.unmerge(plan, strided)
    assert torch.equal(bitwise(restored), bitwise(ops.unmerge(plan, merged[0])))


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_deterministic(device):
    metric = random_metric(3, 2049, 64, torch.bfloat16, device, seed=17)
    x = random_metric(3, 2049, 257, torch.bfloat16, device, seed=18)
    first_plan = ops.bipartite_soft_matching(metric, 700)
    first_merge = ops.merge_wavg(first_plan, x)
    for _ in range(2):
        plan = ops.bipartite_soft_matching(metric, 700)
        for a, b in zip(plan[:6], first_plan[:6]):
            assert torch.equal(bitwise(a), bitwise(b))
        for a, b in zip(ops.merge_wavg(plan, x), first_merge):
            assert torch.equal(bitwise(a), bitwise(b))


def test_proportional_attention_bias():
    size = torch.tensor([[1.0, 2.0, 4.0], [3.0, 1.0, 1.0]])
    bias = ops.proportional_attention_bias(size)
    assert bias.shape == (2, 1, 1, 3) and bias.dtype == torch.float32
    assert torch.equal(bias, reference.proportional_attention_bias(size))
    assert torch.allclose(bias[:, 0, 0], size.log())
    assert ops.proportional_attention_bias(size, dtype=torch.bfloat16).dtype == torch.bfloat16
    # As SDPA's attn_mask: a key of size s weighs like s copies of itself.
    q, k, v = torch.randn(2, 1, 5, 8), torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    copies = size.long()
    for b in range(2):
        k_rep = k[b, 0].repeat_interleave(copies[b], 0)[None, None]
        v_rep = v[b, 0].repeat_interleave(copies[b], 0)[None, None]
        expected = torch.nn.functional.scaled_dot_product_attention(q[b : b + 1], k_rep, v_rep)
        assert torch.allclose(out[b : b + 1], expected, atol=1e-5)


def test_ops_accept_reference_plans():
    metric = random_metric(2, 31, 8, seed=19)
    x = random_metric(2, 31, 12, seed=20)
    plan = reference.bipartite_soft_matching(metric, 9, protected=1)
    merged, size = ops.merge_wavg(plan, x)
    assert torch.equal(size, reference.merge_wavg(plan, x)[1])
    assert torch.equal(ops.unmerge(plan, merged), reference.unmerge(plan, merged))
