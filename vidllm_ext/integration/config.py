"""Configurations accepted by :func:`vidllm_ext.patch`."""

from __future__ import annotations

from dataclasses import dataclass

from vidllm_ext import _routing_checks as routing_check
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


@dataclass(frozen=True)
class MergeConfig:
    """Hierarchical token merging inside a video LLM (LongVLM with ToMe's bipartite matching).

    Each video's temporal steps are cut into segments of ``frames_per_segment`` consecutive steps
    (the last may be shorter); the video tokens of a segment (those DTD kept, when DTD is on) are
    merged jointly across space and time, by rounds of bipartite soft matching on their input
    embeddings, down to ``tokens_per_segment`` tokens. A merged token is the size-weighted mean of
    the tokens it stands for and takes the position ids of its representative (the destination
    that survived every round).

    Args:
        frames_per_segment: temporal steps per segment (Qwen-VL: a step is two frames).
        tokens_per_segment: tokens a segment keeps (a segment holding fewer keeps them all).
        metric_chunks: the matching metric is the embeddings averaged over this many equal
            channel chunks (LongVLM uses 16); it must divide the language model's hidden size.

    Example:
        >>> vidllm_ext.patch(model, merge=vidllm_ext.MergeConfig(tokens_per_segment=64))
    """

    frames_per_segment: int = 10
    tokens_per_segment: int = 30
    metric_chunks: int = 16

    def __post_init__(self) -> None:
        for name in ("frames_per_segment", "tokens_per_segment", "metric_chunks"):
            check.check_positive_int(getattr(self, name), name)


@dataclass(frozen=True)
class MoDConfig:
    """Layer-skip routing of video tokens (VideoLLM-MoD's mixture of depths).

    In every routed decoder layer a learned router (``Linear(hidden_size -> 1)``) scores the video
    tokens; in each temporal step of each video only the top ``ceil(keep_ratio * n)`` pass through
    the layer's attention and MLP, the rest skip it. Text tokens always go through.

    Args:
        keep_ratio: fraction of each step's video tokens a routed layer processes, in [0, 1].
        gate: how a selected video token takes the layer's update ``delta``:
            ``"sigmoid2"`` ``h + 2 sigmoid(s) delta`` (a zero score gives the exact update; the
            default), ``"raw"`` ``h + s delta`` (the MoD paper), ``"none"`` ``h + delta``.
        layers: ``"interleaved"`` (every other decoder layer starting with the second,
            VideoLLM-MoD's best setting) or an explicit sequence of decoder layer indices.

    Example:
        >>> vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.2))
    """

    keep_ratio: float = 0.2
    gate: str = "sigmoid2"
    layers: str | tuple[int, ...] = "interleaved"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", routing_check.check_keep_ratio(self.keep_ratio))
        routing_check.check_gate(self.gate)
        layers = self.layers
        if isinstance(layers, str):
            check.check_choice(layers, ("interleaved",), "layers")
            return
        try:
            layers = tuple(layers)
        except TypeError:
            raise TypeError(
                f"layers: expected 'interleaved' or a sequence of layer indices, got "
                f"{type(self.layers).__name__}"
            ) from None
        for index in layers:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"layers: expected non-negative int layer indices, got {index!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers: a layer is listed twice in {list(layers)}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))
