"""Model families of the end-to-end benchmarks (``--family``), random weights, layers reduced.

- ``qwen2_5_vl``: the real Qwen2.5-VL-7B configuration (``QWEN2_5_VL_7B_*`` below; each script
  adds what its model class needs).
- ``qwen3_5``: transformers' default ``Qwen3_5Config`` / ``Qwen3_5TextConfig`` (the Qwen3.5-9B
  style configuration its docstring names: hidden 4096, 16 heads of 256, 4 KV heads, Gated
  DeltaNet layers with 16 key / 32 value heads of 128, three linear-attention layers to one full
  attention), decoder layers reduced to ``--layers`` (a multiple of 4 keeps the ratio), the
  vision tower whole, its output width set to the decoder's hidden size.
"""

from __future__ import annotations

import torch

FAMILIES = ("qwen2_5_vl", "qwen3_5")
HYBRID_INTERVAL = 4  # every fourth Qwen3.5 decoder layer is full attention
# Qwen2.5-VL-7B: its language model's sizes and text token ids, its vision tower, its vision
# token ids.
QWEN2_5_VL_7B_TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    bos_token_id=151643,
    eos_token_id=151645,
)
QWEN2_5_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    in_chans=3,
)
QWEN2_5_VL_7B_IDS = dict(
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
)


def check_layers(family: str, layers: int) -> None:
    if family == "qwen3_5" and layers < HYBRID_INTERVAL:
        raise SystemExit(
            f"--layers {layers}: Qwen3.5's first full-attention layer is layer 3; give >= 4"
        )


def describe(family: str, layers: int) -> str:
    """One line for the report: the configuration and how many layers ran."""
    full = layers // HYBRID_INTERVAL
    return (
        f"Qwen3.5 (transformers' default Qwen3_5Config, Qwen3.5-9B style), {layers} of 32 "
        f"decoder layers ({layers - full} Gated DeltaNet, {full} full attention), random weights"
    )


def qwen3_5_model(layers: int, device, dtype=torch.bfloat16, tiny: bool = False):
    """Qwen3_5ForConditionalGeneration with random weights (seed 0), sdpa attention."""
    import transformers

    text = dict(num_hidden_layers=layers)
    vision: dict = {}
    if tiny:  # a CPU smoke run of the scripts, not a measurement
        text.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=16)
        text.update(num_key_value_heads=2, vocab_size=320, linear_key_head_dim=8)
        text.update(linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
            "partial_rotary_factor": 0.5,
        }
        vision.update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14)
        vision["num_position_embeddings"] = 64
        ids = dict(image_token_id=300, video_token_id=301)
        ids.update(vision_start_token_id=302, vision_end_token_id=303)
    else:
        ids = {}
    config = transformers.Qwen3_5Config(text_config=text, vision_config=vision, **ids)
    config.vision_config.out_hidden_size = config.text_config.hidden_size
    config._attn_implementation = "sdpa"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen3_5ForConditionalGeneration(config)
    return model.to(dtype).eval()


def qwen3_5_text_model(layers: int, device, max_positions: int):
    """Qwen3_5ForCausalLM (the text decoder alone) with the default configuration, ``layers``
    decoder layers, random weights (seed 0) in bfloat16, sdpa attention."""
    import transformers

    config = transformers.Qwen3_5TextConfig(
        num_hidden_layers=layers, max_position_embeddings=max_positions
    )
    return random_bfloat16_model(transformers.Qwen3_5ForCausalLM, config, device)


def random_bfloat16_model(model_class, config, device):
    """``model_class(config)`` with sdpa attention and random weights (seed 0), created directly
    in bfloat16 on ``device`` (no float32 copy first), in eval mode."""
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def linear_state_bytes(cache) -> int:
    """Bytes of the recurrent and convolution states of a cache's linear-attention layers."""
    total = 0
    for layer in cache.layers:
        for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
            total += sum(t.numel() * t.element_size() for t in states.values() if t is not None)
    return total
