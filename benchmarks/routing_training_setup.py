"""The model, inputs and FLOP model of the routed-training benchmark (``routing_training.py``).

A ``Qwen2_5_VLForConditionalGeneration`` whose language model has a Qwen2.5-VL text
configuration (the 7B one, or a CPU-sized one) and random weights, with a tiny frozen vision
tower projecting to the text width: the video goes through the model's own path (pixels, grid,
video token ids, M-RoPE positions), so the routed layers see its temporal steps exactly as in a
real fine-tuning run, while the benchmark's cost stays in the language model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidllm_ext.bench.shapes import VideoSequence

QWEN_VISION_IDS = dict(video=151656, start=151652, end=151653, image=151655)
QWEN_TEXT_IDS = dict(bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
PATCH, MERGE, TEMPORAL = 14, 2, 2
IGNORE = -100


@dataclass(frozen=True)
class TextPreset:
    """A Qwen2.5-VL text (decoder) configuration."""

    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    full_layers: int  # the layer count of the real model

    @property
    def vision_ids(self) -> dict[str, int]:
        """Qwen2.5-VL's video / vision start / vision end / image token ids; a cut vocabulary
        uses its last four ids instead."""
        if self.vocab > max(QWEN_VISION_IDS.values()):
            return QWEN_VISION_IDS
        return {name: self.vocab - 4 + i for i, name in enumerate(QWEN_VISION_IDS)}

    @property
    def text_ids(self) -> dict[str, int]:
        """Qwen2.5-VL's bos / eos / pad ids; a cut vocabulary uses the three before the vision
        ids."""
        if self.vocab > max(QWEN_TEXT_IDS.values()):
            return QWEN_TEXT_IDS
        return {name: self.vocab - 7 + i for i, name in enumerate(QWEN_TEXT_IDS)}

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def describe(self, layers: int) -> str:
        return (
            f"{self.name}: hidden {self.hidden}, {self.heads} heads ({self.kv_heads} KV, head "
            f"dim {self.head_dim}), intermediate {self.intermediate}, vocab {self.vocab}; "
            f"{layers} of {self.full_layers} decoder layers"
        )


PRESETS = {
    preset.name: preset
    for preset in (
        TextPreset("qwen2.5-vl-7b", 3584, 18944, 28, 4, 152064, 28),
        # The 7B shape scaled down for a CPU: head dim 128 and the MLP ratio kept, vocab cut.
        TextPreset("cpu-small", 512, 2688, 4, 2, 32000, 28),
    )
}


@dataclass(frozen=True)
class Sequence(VideoSequence):
    """One training sample: text, a video of ``steps`` x ``tokens_per_step`` tokens, text."""

    steps: int = 16
    tokens_per_step: int = 256
    text_tokens: int = 128  # every non-video token: prompt, vision start / end, caption

    @property
    def caption_tokens(self) -> int:
        """The labelled text after the video (half the text, less the vision end marker)."""
        return self.text_tokens - self.prompt_tokens - 2

    @property
    def prompt_tokens(self) -> int:
        return (self.text_tokens - 2) // 2

    @property
    def grid_side(self) -> int:
        """Patches per side of a square frame with ``tokens_per_step`` merged tokens."""
        side = round((self.tokens_per_step) ** 0.5)
        if side * side != self.tokens_per_step:
            raise ValueError(f"tokens per step must be a square, got {self.tokens_per_step}")
        return MERGE * side

    def describe(self) -> str:
        return (
            f"batch 1: {self.prompt_tokens + 1} text tokens, {self.steps} temporal steps x "
            f"{self.tokens_per_step} video tokens, {self.caption_tokens + 1} text tokens "
            f"({self.tokens} in all); labels on the last {self.caption_tokens} (the caption)"
        )


def build_model(preset: TextPreset, layers: int, dtype: torch.dtype, device: torch.device):
    """The model in train mode, weights random (seed 0) in ``dtype`` on ``device``; the vision
    tower is frozen (its pixels carry no gradient, so nothing flows back into it)."""
    import transformers

    text = dict(
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        vocab_size=preset.vocab,
        **preset.text_ids,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    vision = dict(
        depth=1,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=preset.hidden,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
        window_size=112,
        fullatt_block_indexes=[0],
        tokens_per_second=2,
        in_channels=3,
    )
    config = transformers.Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=preset.vision_ids["image"],
        video_token_id=preset.vision_ids["video"],
        vision_start_token_id=preset.vision_ids["start"],
        vision_end_token_id=preset.vision_ids["end"],
    )
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.model.visual.requires_grad_(False)
    return model.train()


def training_inputs(sequence: Sequence, preset: TextPreset, dtype: torch.dtype, device) -> dict:
    """Forward arguments of one sample. The logits are computed only where a label needs them
    (``logits_to_keep``: the token before the caption and the caption), with the labels cut to
    the same positions; the model's own loss shifts them."""
    generator = torch.Generator().manual_seed(0)
    ids = preset.vision_ids
    words = torch.randint(1000, 30000, (sequence.text_tokens,), generator=generator)
    prompt, caption = words[: sequence.prompt_tokens], words[sequence.prompt_tokens + 2 :]
    video = torch.full((sequence.video_tokens,), ids["video"])
    start, end = torch.tensor([ids["start"]]), torch.tensor([ids["end"]])
    ids = torch.cat([prompt, start, video, end, caption])
    input_ids = ids[None]
    labels = torch.full_like(input_ids, IGNORE)
    labels[0, -sequence.caption_tokens :] = caption
    keep = sequence.caption_tokens + 1
    side = sequence.grid_side
    pixels = torch.rand(sequence.steps * side * side, 3 * TEMPORAL * PATCH**2, generator=generator)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == preset.vision_ids["video"]).int() * 2,
        pixel_values_videos=pixels.to(dtype),
        video_grid_thw=torch.tensor([[sequence.steps, side, side]]),
        labels=labels[:, -keep:],
    )
    inputs = {name: value.to(device) for name, value in inputs.items()}
    inputs["logits_to_keep"] = keep
    return inputs


def step_flops(preset: TextPreset, layers: int, tokens_per_layer: list[int], logits: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward; a multiply-add is 2
    FLOPs) of the decoder layers, each over its own token count, plus the LM head on ``logits``
    positions. Linear layers: ``2 * tokens * weights``; causal attention: ``4 * heads * head_dim
    * tokens * (tokens + 1) / 2``. The vision tower, norms, rotary and the optimizer are left
    out."""
    hidden, kv = preset.hidden, preset.kv_heads * preset.head_dim
    weights = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * preset.intermediate
    total = 0.0
    for tokens in tokens_per_layer[:layers]:
        total += 2 * tokens * weights
        total += 4 * preset.heads * preset.head_dim * tokens * (tokens + 1) / 2
    total += 2 * logits * hidden * preset.vocab
    return 3 * total
