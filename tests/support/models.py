"""Tiny video LLMs with random weights, built in-process (nothing is downloaded), and synthetic
video inputs laid out the way each family's processor lays them out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB = 320
IMAGE, VIDEO, START, END = 300, 301, 302, 303
PATCH, MERGE, TEMPORAL = 14, 2, 2
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=VOCAB,
    max_position_embeddings=4096,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
IDS = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START)
# Qwen3-VL-MoE: Qwen3-VL's layout with sparse MoE blocks. Qwen3.5 (-MoE): Qwen3-VL's video layout
# without deepstack, and a hybrid decoder (three Gated DeltaNet layers to one full attention).
NEW_FAMILIES = ["qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]
QWEN_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", *NEW_FAMILIES]
FAMILIES = [*QWEN_FAMILIES, "llava_onevision"]
# Families that write each temporal step as timestamp text + its own vision block.
PER_STEP_FAMILIES = ("qwen3_vl", *NEW_FAMILIES)
HYBRID_FAMILIES = ("qwen3_5", "qwen3_5_moe")
MOE_FAMILIES = ("qwen3_vl_moe", "qwen3_5_moe")
# Cosine thresholds that separate the synthetic videos' static tokens from their moving ones in
# the tiny random models (SigLIP mixes a frame more globally than Qwen's windowed tower).
FEATURE_THRESHOLD = dict.fromkeys(QWEN_FAMILIES, 0.9) | {"llava_onevision": 0.995}
# Hybrid text stacks: at least one full-attention layer (every fourth), tiny DeltaNet heads.
HYBRID_MIN_LAYERS = 4
LINEAR_ATTENTION = dict(
    linear_conv_kernel_dim=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
)
# Qwen3.5 rotates part of each head (a quarter in the released models; half of 16 here).
PARTIAL_MROPE = dict(MROPE, mrope_section=[2, 1, 1], mrope_interleaved=True)
PARTIAL_MROPE["partial_rotary_factor"] = 0.5
# A few experts, two per token; Qwen3.5-MoE adds a shared expert.
EXPERTS = dict(moe_intermediate_size=32, num_experts_per_tok=2, num_experts=4)
LLAVA_IMAGE = 112  # 8 x 8 SigLIP patches, pooled to 4 x 4 = 16 tokens per frame


def build_model(family: str, attn_implementation: str = "sdpa", seed: int = 0):
    import transformers

    if family in QWEN_FAMILIES:
        config, model_class = _qwen_config(family)
    elif family == "llava_onevision":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
        vision.update(num_attention_heads=2, image_size=LLAVA_IMAGE, patch_size=PATCH)
        config = transformers.LlavaOnevisionConfig(
            text_config=dict(TEXT, model_type="qwen2"),
            vision_config=dict(vision, model_type="siglip_vision_model"),
            image_token_index=IMAGE,
            video_token_index=VIDEO,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        model_class = transformers.LlavaOnevisionForConditionalGeneration
    else:
        raise ValueError(family)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return model_class(config).eval()


# transformers' class names of each Qwen family: {prefix}Config, {prefix}ForConditionalGeneration.
QWEN_CLASS_PREFIX = {
    "qwen2_vl": "Qwen2VL",
    "qwen2_5_vl": "Qwen2_5_VL",
    "qwen3_vl": "Qwen3VL",
    "qwen3_vl_moe": "Qwen3VLMoe",
    "qwen3_5": "Qwen3_5",
    "qwen3_5_moe": "Qwen3_5Moe",
}


def _qwen_config(family: str):
    """Config and model class of a tiny Qwen-VL model: each generation's vision tower and rope,
    deepstack on Qwen3-VL (-MoE), experts on the MoE families, the hybrid decoder on Qwen3.5."""
    import transformers

    vision = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE)
    vision.update(temporal_patch_size=TEMPORAL, in_channels=3)
    text = dict(TEXT, rope_parameters=MROPE)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64)
    if family == "qwen2_5_vl":
        vision.update(window_size=56, fullatt_block_indexes=[1], tokens_per_second=2)
    if family.startswith("qwen3"):
        vision.update(num_position_embeddings=64)
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        text["rope_parameters"] = dict(MROPE, mrope_interleaved=True)
        vision.update(deepstack_visual_indexes=[0, 1])
    if family in HYBRID_FAMILIES:
        layers = max(TEXT["num_hidden_layers"], HYBRID_MIN_LAYERS)
        text.update(num_hidden_layers=layers, rope_parameters=PARTIAL_MROPE, **LINEAR_ATTENTION)
    if family in MOE_FAMILIES:
        text.update(EXPERTS)
    if family == "qwen3_5_moe":
        text.update(shared_expert_intermediate_size=32)
    prefix = QWEN_CLASS_PREFIX[family]
    config_class = getattr(transformers, f"{prefix}Config")
    config = config_class(text_config=text, vision_config=vision, **IDS, vision_end_token_id=END)
    return config, getattr(transformers, f"{prefix}ForConditionalGeneration")


def text_only_model():
    """A tiny Llama: a model type vidllm_ext.patch does not support."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    return transformers.LlamaForCausalLM(config)


@dataclass
class SyntheticVideo:
    """Pixel rows of a static scene where `moving` tokens change at every step."""

    steps: int = 4
    grid: int = 8  # patches per side; (grid / MERGE)^2 tokens per step
    moving: tuple = (0, 5, 6)
    seed: int = 0

    @property
    def tokens_per_step(self) -> int:
        return (self.grid // MERGE) ** 2

    def pixel_rows(self) -> torch.Tensor:
        """float32 [steps * grid * grid, 3 * TEMPORAL * PATCH^2], ordered like the Qwen
        processor: the MERGE^2 patches of one token are consecutive rows."""
        generator = torch.Generator().manual_seed(self.seed)
        width = 3 * TEMPORAL * PATCH * PATCH
        per_token = MERGE * MERGE
        base = torch.rand(self.tokens_per_step, per_token, width, generator=generator)
        steps = base.expand(self.steps, -1, -1, -1).clone()
        for step in range(1, self.steps):
            for token in self.moving:
                steps[step, token] = torch.rand(per_token, width, generator=generator)
        return steps.reshape(-1, width)

    def frames_rgb(self) -> torch.Tensor:
        """float32 [steps, 3, LLAVA_IMAGE, LLAVA_IMAGE]: the same scene as frames, each of the 16
        tokens owning a 28 x 28 pixel square."""
        generator = torch.Generator().manual_seed(self.seed)
        side, cell = 4, LLAVA_IMAGE // 4
        frames = torch.rand(3, LLAVA_IMAGE, LLAVA_IMAGE, generator=generator).expand(
            self.steps, -1, -1, -1
        )
        frames = frames.clone()
        for step in range(1, self.steps):
            for token in self.moving:
                row, column = divmod(token, side)
                square = (
                    slice(None),
                    slice(row * cell, (row + 1) * cell),
                    slice(column * cell, (column + 1) * cell),
                )
                frames[step][square] = torch.rand(3, cell, cell, generator=generator)
        return frames

    def grid_thw(self) -> list[int]:
        return [self.steps, self.grid, self.grid]


def make_inputs(family: str, videos: list[SyntheticVideo], prompt_lengths: list[int]) -> dict:
    """A left-padded batch, one video per sample: text, the video, text."""
    rows = []
    for video, prompt in zip(videos, prompt_lengths):
        if family == "llava_onevision":  # frames * 16 tokens, then the newline token
            body = [VIDEO] * (video.steps * video.tokens_per_step + 1)
        elif family in PER_STEP_FAMILIES:  # timestamp text between steps, each its own block
            body = []
            for _ in range(video.steps):
                body += [40, 41, START] + [VIDEO] * video.tokens_per_step + [END]
        else:
            body = [START] + [VIDEO] * (video.steps * video.tokens_per_step) + [END]
        ids = list(range(10, 10 + prompt)) + body + [50, 51, 52]
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, length - len(ids) :] = torch.tensor(ids)
        attention_mask[i, length - len(ids) :] = 1
    if family == "llava_onevision":
        pixels = torch.stack([v.frames_rgb() for v in videos])
        return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixels)
    mm_token_type_ids = (input_ids == VIDEO).int() * 2
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_token_type_ids,
        pixel_values_videos=torch.cat([v.pixel_rows() for v in videos]),
        video_grid_thw=torch.tensor([v.grid_thw() for v in videos]),
    )


def video_layout(family: str, inputs: dict, sample: int = 0) -> tuple[torch.Tensor, int, int]:
    """(columns of the video's frame tokens, steps, tokens per step) of one sample's video."""
    columns = (inputs["input_ids"][sample] == VIDEO).nonzero().flatten()
    if family == "llava_onevision":
        return columns[:-1], (columns.numel() - 1) // 16, 16
    steps, height, width = inputs["video_grid_thw"][sample].tolist()
    return columns, steps, height * width // MERGE**2


def dtd_for(family: str):
    """The DTD configuration that drops the synthetic videos' static tokens in a tiny model."""
    import vidllm_ext

    return vidllm_ext.DTDConfig(threshold=FEATURE_THRESHOLD[family])
