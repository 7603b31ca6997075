"""torch.autograd.gradcheck of a function of large tensors in a few random directions."""

import torch


def gradcheck_in_directions(fn, inputs, *, directions=12, outputs=8, seed=0, **tolerances):
    """Full (not fast-mode) ``torch.autograd.gradcheck`` of ``fn`` restricted to ``directions``
    random directions around each of ``inputs`` and projected on ``outputs`` random directions of
    its output: it compares every entry of ``P^T J B`` (J the Jacobian, B and P the random bases)
    computed by autograd with finite differences, at the cost of ``2 * directions`` forwards per
    input and ``outputs`` backwards. (gradcheck's own fast mode, one direction pair, let a 50%
    error in a scatter backward through a routed layer pass.)"""
    generator = torch.Generator().manual_seed(seed)
    inputs = [x.detach() for x in inputs]
    bases = [unit_rows(directions, x.numel(), x.dtype, generator) for x in inputs]
    with torch.no_grad():
        size = fn(*inputs).numel()
    projection = unit_rows(outputs, size, inputs[0].dtype, generator).T

    def projected(*coefficients):
        moved = [x + (c @ b).view_as(x) for x, c, b in zip(inputs, coefficients, bases)]
        return fn(*moved).reshape(-1) @ projection

    coefficients = [torch.zeros(directions, dtype=x.dtype, requires_grad=True) for x in inputs]
    return torch.autograd.gradcheck(projected, coefficients, **tolerances)


def unit_rows(rows: int, size: int, dtype, generator) -> torch.Tensor:
    """``[rows, size]`` random directions of norm 1."""
    directions = torch.randn(rows, size, dtype=dtype, generator=generator)
    return directions / directions.norm(dim=1, keepdim=True)
