"""Configurations accepted by :func:`vidllm_ext.patch`."""

from __future__ import annotations

from dataclasses import dataclass

from vidllm_ext import _validation as check


@dataclass(frozen=True)
class DTDConfig:
    """Frame-difference token drop inside a video LLM (TimeChat-Online).

    Args:
        threshold: ``mode="absolute"``: drop a video token whose cosine similarity to the same
            position one temporal step earlier exceeds it (``method="feature"``, in [-1, 1]), or
            whose mean absolute pixel difference is below it (``method="pixel"``, >= 0).
            ``mode="relative"``: the fraction in [0, 1] of each step's tokens to drop.
        method: ``"feature"`` compares the LLM input embeddings of the video tokens;
            ``"pixel"`` compares the processor's pixel patches under each token.
        mode: ``"absolute"`` or ``"relative"``.

    Example:
        >>> vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold=0.5))
    """

    threshold: float = 0.5
    method: str = "feature"
    mode: str = "absolute"

    def __post_init__(self) -> None:
        check.check_choice(self.method, check.DTD_METHODS, "method")
        check.check_choice(self.mode, check.DTD_MODES, "mode")
        object.__setattr__(
            self, "threshold", check.check_dtd_threshold(self.threshold, self.method, self.mode)
        )
