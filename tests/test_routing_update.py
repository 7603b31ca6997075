"""routed_update, the routed layer's math for one sequence: the ops version (kernels) against the
reference in forward and gradients, the section-2 semantics spelled out, gradcheck in float64."""

import math

import pytest
import torch
from conftest import DEVICES
from support.helpers import assert_close_to_oracle
from support.routing_cases import offsets_from_counts, random_scores

from vidllm_ext import ops, reference

GATES = ["sigmoid2", "raw", "none"]
DIM = 24


def sequence(frames=4, tokens_per_frame=37, text_between=2, device="cpu"):
    """is_video bool [T] for 5 text tokens, then frames of video tokens with text between them,
    then 3 text tokens; and the offsets of the frames over the video tokens."""
    parts = [torch.zeros(5, dtype=torch.bool)]
    for _ in range(frames):
        parts += [torch.ones(tokens_per_frame, dtype=torch.bool)]
        parts += [torch.zeros(text_between, dtype=torch.bool)]
    parts.append(torch.zeros(3, dtype=torch.bool))
    is_video = torch.cat(parts).to(device)
    return is_video, offsets_from_counts([tokens_per_frame] * frames).to(device)


class Layer(torch.nn.Module):
    """A stand-in decoder layer: position-dependent (reads the selected index) and nonlinear."""

    def __init__(self, dim, dtype=torch.float32, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=generator) / dim**0.5)
        self.to(dtype)

    def forward(self, hidden, index):
        position = torch.sin(index.to(hidden.dtype))[:, None]
        return torch.tanh(hidden @ self.weight + position)


def inputs(dtype=torch.float32, device="cpu", seed=1, dim=DIM, **layout):
    is_video, offsets = sequence(device=device, **layout)
    generator = torch.Generator().manual_seed(seed)
    tokens = is_video.shape[0]
    hidden = torch.randn(tokens, dim, generator=generator).to(dtype=dtype, device=device)
    scores = torch.randn(tokens, generator=generator).to(dtype=dtype, device=device)
    return hidden, scores, is_video, offsets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("keep_ratio", [0.0, 0.2, 0.5, 1.0])
def test_ops_match_reference_forward_and_gradients(device, gate, keep_ratio):
    hidden, scores, is_video, offsets = inputs()
    results = {}
    for name, impl, dtype, where in [
        ("ops", ops, torch.float32, device),
        ("reference", reference, torch.float32, "cpu"),
        ("oracle", reference, torch.float64, "cpu"),
    ]:
        layer = Layer(DIM, dtype).to(where)
        h = hidden.to(dtype=dtype, device=where).requires_grad_()
        s = scores.to(dtype=dtype, device=where).requires_grad_()
        out = impl.routed_update(
            h, s, is_video.to(where), offsets.to(where), keep_ratio, layer, gate=gate
        )
        grad_out = torch.ones_like(out) + 0.1 * torch.arange(out.numel()).reshape(out.shape)
        grad_out = grad_out.to(dtype=dtype, device=where).sin()
        gradients = torch.autograd.grad(out, (h, s, layer.weight), grad_out, allow_unused=True)
        results[name] = [out, *(torch.zeros_like(s) if g is None else g for g in gradients)]
    ops_out, ref_out = results["ops"][0], results["reference"][0]
    assert torch.equal(ops_out.cpu(), ref_out)
    for actual, torch_result, oracle in zip(*results.values()):
        assert_close_to_oracle(actual, torch_result, oracle)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gate", GATES)
def test_semantics_spelled_out(device, gate):
    hidden, scores, is_video, offsets = inputs(device=device, seed=2)
    layer = Layer(DIM).to(device)
    out = ops.routed_update(hidden, scores, is_video, offsets, 0.2, layer, gate=gate)
    selected = ops.select_routed_tokens(scores, is_video, offsets, 0.2)
    assert torch.equal(selected, torch.sort(selected).values)
    mask = torch.zeros_like(is_video)
    mask[selected] = True
    assert mask[~is_video].all(), "text tokens are always selected"
    video_selected = mask[is_video].reshape(4, 37)
    assert (video_selected.sum(1) == math.ceil(0.2 * 37)).all()
    video_scores = scores[is_video].reshape(4, 37)
    for frame in range(4):  # the kept tokens of each frame are its highest scores
        kept_scores = video_scores[frame][video_selected[frame]]
        assert kept_scores.min() >= video_scores[frame][~video_selected[frame]].max()
    delta = layer(hidden[selected], selected) - hidden[selected]
    gate_value = {"sigmoid2": 2 * torch.sigmoid(scores), "raw": scores}.get(gate)
    g = torch.ones_like(scores) if gate_value is None else gate_value
    g = torch.where(is_video, g, torch.ones_like(g))[selected]
    expected = hidden.clone()
    expected[selected] = hidden[selected] + g[:, None] * delta
    assert torch.equal(out[~mask], hidden[~mask]), "unselected tokens pass through unchanged"
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("keep_ratio", [0.0, 0.3, 1.0])
def test_selection_matches_reference(device, keep_ratio):
    is_video, offsets = sequence(frames=7, tokens_per_frame=45, device=device)
    scores = random_scores(is_video.shape[0], torch.bfloat16, seed=7, hostile=True).to(device)
    selected = ops.select_routed_tokens(scores, is_video, offsets, keep_ratio)
    expected = reference.select_routed_tokens(
        scores.cpu(), is_video.cpu(), offsets.cpu(), keep_ratio
    )
    assert torch.equal(selected.cpu(), expected)
    assert selected.numel() == int((~is_video).sum()) + 7 * math.ceil(keep_ratio * 45)


@pytest.mark.parametrize("device", DEVICES)
def test_keep_all_without_gate_is_the_dense_layer(device):
    hidden, scores, is_video, offsets = inputs(device=device, seed=3)
    layer = Layer(DIM).to(device)
    out = ops.routed_update(hidden, scores, is_video, offsets, 1.0, layer, gate="none")
    dense = layer(hidden, torch.arange(hidden.shape[0], device=device))
    torch.testing.assert_close(out, dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_router_gradient_reaches_only_selected_video_tokens(device):
    hidden, scores, is_video, offsets = inputs(device=device, seed=4)
    scores.requires_grad_()
    out = ops.routed_update(hidden, scores, is_video, offsets, 0.3, Layer(DIM).to(device))
    (grad,) = torch.autograd.grad(out.square().sum(), scores)
    selected = torch.zeros_like(is_video)
    selected[ops.select_routed_tokens(scores, is_video, offsets, 0.3)] = True
    assert (grad[selected & is_video] != 0).all()
    assert (grad[~(selected & is_video)] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_sequences_without_video_or_tokens(device):
    layer = Layer(DIM).to(device)
    hidden = torch.randn(6, DIM, device=device)
    text_only = torch.zeros(6, dtype=torch.bool, device=device)
    no_segments = torch.zeros(1, dtype=torch.int64, device=device)
    scores = torch.randn(6, device=device)
    out = ops.routed_update(hidden, scores, text_only, no_segments, 0.2, layer)
    torch.testing.assert_close(out, layer(hidden, torch.arange(6, device=device)))
    empty = hidden[:0]
    out = ops.routed_update(empty, empty[:, 0], text_only[:0], no_segments, 0.2, layer)
    assert out.shape == (0, DIM)
    only_video = torch.ones(6, dtype=torch.bool, device=device)
    offsets = torch.tensor([0, 3, 6], device=device)
    out = ops.routed_update(hidden, scores, only_video, offsets, 0.0, layer)
    assert torch.equal(out, hidden), "keep_ratio 0 on an all-video sequence changes nothing"


@pytest.mark.parametrize("gate", GATES)
def test_gradcheck_float64(gate):
    hidden, scores, is_video, offsets = inputs(
        torch.float64, seed=5, dim=4, frames=2, tokens_per_frame=7
    )
    # Scores a clear step apart, so the finite differences never change the selection.
    scores = torch.randperm(scores.shape[0], generator=torch.Generator().manual_seed(6)).double()
    scores = (scores / scores.shape[0] - 0.5).requires_grad_()
    layer = Layer(4, torch.float64)
    hidden.requires_grad_()

    def routed(hidden, scores, weight):
        def layer_fn(h, index):
            return torch.tanh(h @ weight + torch.sin(index.double())[:, None])

        return ops.routed_update(hidden, scores, is_video, offsets, 0.4, layer_fn, gate=gate)

    assert torch.autograd.gradcheck(routed, (hidden, scores, layer.weight))
