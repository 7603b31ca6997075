"""A routed decoder layer against reference.routing.routed_update, forward and backward."""

import torch

from vidllm_ext import reference


def routed_and_reference(layer, hidden, kwargs, is_video, offsets, keep_ratio, raw_layer):
    """Runs ``layer`` (patched, routed) and the reference with ``raw_layer`` on the same float64
    input and upstream gradient; returns ``[(out, grad_hidden, grad_router)]`` for each, routed
    first."""
    upstream = torch.randn(hidden.shape[1:], dtype=torch.float64)
    results = []
    for routed in (True, False):
        layer.zero_grad()
        leaf = hidden.clone().requires_grad_()
        if routed:
            out = layer(leaf, **kwargs)[0]
        else:
            scores = layer.vidllm_router(leaf[0]).squeeze(-1)
            out = reference.routing.routed_update(
                leaf[0], scores, is_video, offsets, keep_ratio, raw_layer, "sigmoid2"
            )
        out.backward(upstream)
        results.append((out.detach(), leaf.grad, layer.vidllm_router.weight.grad.clone()))
    return results
