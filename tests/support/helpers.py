"""Input builders and comparison rules shared by the tests (see DESIGN.md, correctness policy)."""

from __future__ import annotations

import dataclasses

import torch

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Float32 rounding band around a threshold inside which kernel and reference decisions may differ.
DECISION_BAND = 2e-5


def video_frames(steps, tokens, dim, dtype, device, seed=0, noise=0.3):
    """Random video-like features: a per-position base plus per-step noise, never zeros."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, tokens, dim, generator=generator)
    frames = base + noise * torch.randn(steps, tokens, dim, generator=generator)
    return frames.to(dtype=dtype, device=device)


def scores_float64(frames, method, prev=None):
    """The DTD scores computed in float64: the oracle that kernel and torch errors are measured
    against."""
    x = frames.double()
    first = prev.double()[None] if prev is not None else torch.zeros_like(x[:1])
    previous = torch.cat([first, x[:-1]])
    if method == "feature":
        norms = x.norm(dim=-1).clamp_min(1e-8) * previous.norm(dim=-1).clamp_min(1e-8)
        scores = (x * previous).sum(-1) / norms
    else:
        scores = (x - previous).abs().mean(-1)
    if prev is None and scores.shape[0] > 0:
        scores[0] = float("nan")
    return scores


def assert_close_to_oracle(actual, torch_result, oracle):
    """Error vs the float64 oracle at most twice PyTorch's own, NaN exactly where the oracle has
    it, and a cosine guard."""
    actual, torch_result, oracle = (
        t.detach().cpu().double() for t in (actual, torch_result, oracle)
    )
    assert torch.equal(actual.isnan(), oracle.isnan()), "NaN pattern differs from the oracle"
    finite = ~oracle.isnan()
    if not finite.any():
        return
    a, t, o = actual[finite], torch_result[finite], oracle[finite]
    assert torch.equal(a.isinf(), o.isinf()) and torch.equal(a[a.isinf()], o[o.isinf()])
    bounded = ~o.isinf()
    a, t, o = a[bounded], t[bounded], o[bounded]
    if o.numel() == 0:
        return
    scale = max(1.0, o.abs().max().item())
    kernel_error = (a - o).abs().max().item()
    torch_error = (t - o).abs().max().item()
    assert kernel_error <= 2 * torch_error + 1e-6 * scale, (kernel_error, torch_error)
    if o.numel() > 1 and o.norm() > 0:
        cosine = torch.nn.functional.cosine_similarity(a, o, dim=0).item()
        assert cosine > 0.99999, cosine


def poison_like(tensor):
    """A tensor of the same shape whose every element is obviously unwritten."""
    if tensor.dtype.is_floating_point:
        return torch.full_like(tensor, float("nan"))
    if tensor.dtype == torch.bool:
        return torch.ones_like(tensor)
    return torch.full_like(tensor, -7)


def leaves(result) -> list:
    """An op's result flattened in order: tensors, None and other values, with the fields of
    dataclasses and the items of tuples and lists expanded."""
    if isinstance(result, torch.Tensor) or result is None:
        return [result]
    if dataclasses.is_dataclass(result):
        return [x for f in dataclasses.fields(result) for x in leaves(getattr(result, f.name))]
    if isinstance(result, (tuple, list)):
        return [x for item in result for x in leaves(item)]
    return [result]


def strided_view(base, dim: int):
    """A non-contiguous view of the 3-D ``base`` with ``dim`` strided: 1, every third entry of
    dimension 1; 0, base's values in a transposed copy transposed back; -1, every second entry of
    the last dimension (no longer unit-stride)."""
    if dim == 1:
        return base[:, ::3]
    if dim == 0:
        return base.transpose(0, 1).contiguous().transpose(0, 1)
    return base[..., ::2]
