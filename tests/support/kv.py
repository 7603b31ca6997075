"""KV tensors like real keys, and packed-structure equality (the KV scheme tests)."""

import torch


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
