"""Plain-PyTorch oracles: the specification in code, used by tests, baselines and as fallback."""

from vidllm_ext.reference.dtd import (
    compact_tokens,
    drop_redundant_tokens,
    dtd_keep_mask,
    dtd_scores,
)

__all__ = ["compact_tokens", "drop_redundant_tokens", "dtd_keep_mask", "dtd_scores"]
