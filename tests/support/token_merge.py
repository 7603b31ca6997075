"""Oracles and comparisons for the token-merging tests (see DESIGN.md, correctness policy)."""

from __future__ import annotations

import torch

from support.helpers import DECISION_BAND, assert_close_to_oracle
from vidllm_ext.contracts.token_merge import MergePlan
from vidllm_ext.reference.token_merge import plan_from_merges, rank_order, set_sizes

PLAN_INDEX_FIELDS = ("slot", "kept_index", "source_offsets", "source_index")


def random_metric(batch, tokens, channels, dtype=torch.float32, device="cpu", seed=0):
    """Random Gaussian metric: similarities spread well apart, never zeros."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, channels, generator=generator).to(dtype=dtype, device=device)


def video_tokens(frames, per_frame, dim, dtype=torch.float32, device="cpu", seed=0, noise=0.3):
    """Video-like tokens [F, N, D]: a base per position plus per-frame noise."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, per_frame, dim, generator=generator)
    tokens = base + noise * torch.randn(frames, per_frame, dim, generator=generator)
    return tokens.to(dtype=dtype, device=device)


def similarity_float64(metric, protected):
    """float64 [B, |A|, |B|] cosine similarities, the oracle for scores."""
    tokens = metric.shape[1]
    a_size, b_size = set_sizes(tokens, protected)
    values = metric.detach().cpu().double()
    a = values[:, protected::2][:, :a_size]
    b = values[:, protected + 1 :: 2][:, :b_size]
    a_norm = a.norm(dim=-1).clamp_min(1e-8)
    b_norm = b.norm(dim=-1).clamp_min(1e-8)
    return (a @ b.transpose(1, 2)) / (a_norm[..., :, None] * b_norm[..., None, :])


def plan_from_scores(partner, score, tokens, protected, r):
    """The plan the reference derives from given partners and scores: what a kernel must produce
    exactly from its own matching results."""
    merged = torch.zeros_like(score, dtype=torch.bool).scatter(1, rank_order(score)[:, :r], True)
    return plan_from_merges(partner, score, merged, tokens, protected, r)


# Kernel scores (float32 sums) against the reference's (float64 sums, rounded once): float32
# rounding of a cosine in [-1, 1].
SCORE_ROUNDING = 1e-6


def assert_plan_equal(actual: MergePlan, expected: MergePlan, score_atol: float = 0.0):
    """Index fields and partners exactly; scores bitwise, or within score_atol (a kernel's plan
    against the reference's: see SCORE_ROUNDING)."""
    assert actual.r == expected.r and actual.protected == expected.protected
    for name in (*PLAN_INDEX_FIELDS, "partner"):
        a, e = getattr(actual, name).cpu(), getattr(expected, name).cpu()
        assert a.dtype == e.dtype == torch.int64, name
        assert torch.equal(a, e), f"{name} differs:\n{a}\n{e}"
    score_a, score_e = actual.score.cpu(), expected.score.cpu()
    assert score_a.dtype == torch.float32
    assert torch.equal(score_a.isnan(), score_e.isnan())
    difference = (score_a.nan_to_num() - score_e.nan_to_num()).abs()
    assert (difference <= score_atol).all(), f"scores differ by up to {difference.max()}"


def assert_plan_matches_reference(plan: MergePlan, expected: MergePlan, metric):
    """The kernel's plan against the reference's. Exact given the kernel's own partners and
    scores; partners and merge decisions may differ from the reference only where similarities
    tie within DECISION_BAND (float32 rounding), and exactly where neither does; scores within
    the float policy of a float64 oracle."""
    assert_plan_equal(
        plan, plan_from_scores(plan.partner.cpu(), plan.score.cpu(), *_geometry(plan))
    )
    similarity = similarity_float64(metric, plan.protected)
    partner, ref_partner = plan.partner.cpu(), expected.partner.cpu()
    partner_differs = partner != ref_partner
    if partner_differs.any():
        chosen, wanted = (
            similarity.gather(-1, p.clamp_min(0)[..., None])[..., 0] for p in (partner, ref_partner)
        )
        gap = (chosen - wanted).abs()[partner_differs]
        assert (gap <= DECISION_BAND).all(), f"partner differs off a tie: {gap.max()}"
    if similarity.shape[-1] > 0:
        oracle = similarity.gather(-1, partner.clamp_min(0)[..., None])[..., 0]
        assert_close_to_oracle(plan.score.cpu(), expected.score.cpu(), oracle)
    merge_differs = _merged_mask(plan) != _merged_mask(expected)
    if merge_differs.any():
        score = expected.score.cpu().nan_to_num(nan=-2.0)
        boundary = score.sort(-1, descending=True)[0][:, plan.r - 1 : plan.r]
        gap = (score - boundary).abs()[merge_differs]
        assert (gap <= DECISION_BAND).all(), f"merge decision differs off a tie: {gap.max()}"
    if not partner_differs.any() and not merge_differs.any():
        for name in PLAN_INDEX_FIELDS:
            assert torch.equal(getattr(plan, name).cpu(), getattr(expected, name).cpu()), name


def _geometry(plan: MergePlan) -> tuple[int, int, int]:
    return plan.tokens, plan.protected, plan.r


def _merged_mask(plan: MergePlan) -> torch.Tensor:
    """bool [B, |A|]: which A tokens merged (their slot is shared with their partner)."""
    a_size = plan.partner.shape[1]
    a_tokens = plan.protected + 2 * torch.arange(a_size)
    merged = torch.zeros(plan.slot.shape[0], a_size, dtype=torch.bool)
    if plan.r == 0:
        return merged
    slot = plan.slot.cpu()
    destination = plan.protected + 2 * plan.partner.cpu().clamp_min(0) + 1
    valid = plan.partner.cpu() >= 0
    shared = slot[:, a_tokens] == slot.gather(1, destination.clamp_max(plan.tokens - 1))
    return shared & valid


def merge_oracle(plan: MergePlan, x, size=None):
    """float64 ``(x_merged, size)`` under plan: the oracle features are measured against."""
    slot, kept_index = plan.slot.cpu(), plan.kept_index.cpu()
    values = x.detach().cpu().double()
    batch, tokens, dim = values.shape
    outputs = kept_index.shape[1]
    weights = (
        torch.ones(batch, tokens, dtype=torch.float64) if size is None else size.cpu().double()
    )
    total = torch.zeros(batch, outputs, dtype=torch.float64).scatter_add(1, slot, weights)
    weighted = torch.zeros(batch, outputs, dim, dtype=torch.float64)
    weighted.scatter_add_(1, slot[..., None].expand(-1, -1, dim), values * weights[..., None])
    received = plan.source_offsets.cpu().diff(dim=1) > 0
    kept = values.gather(1, kept_index[..., None].expand(-1, -1, dim))
    merged = torch.where(received[..., None], weighted / total[..., None], kept)
    return merged, torch.where(received, total, weights.gather(1, kept_index))


def assert_features_close(actual, reference_result, oracle):
    """Merged features: within twice the reference's error vs the float64 oracle, NaN where the
    oracle has it, cosine guard (helpers.assert_close_to_oracle), element by element."""
    assert_close_to_oracle(actual.flatten(), reference_result.flatten(), oracle.flatten())


def bitwise(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers, so NaN payloads and signed zeros compare too."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.float32:
        return tensor.view(torch.int32)
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.view(torch.int16)
    return tensor
