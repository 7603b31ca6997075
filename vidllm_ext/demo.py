"""`vidllm-ext demo`: a video LLM unpatched, with frame-difference token drop, and with token drop
followed by hierarchical merging, side by side.

By default a small Qwen2.5-VL built from the config shipped in vidllm_ext/configs (fixed seed,
random weights: its answers are noise, its costs are real) watches a procedurally generated clip:
a textured static background, a moving object, and one scene cut halfway.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidllm_ext.integration import DTDConfig, MergeConfig, last_stats, patch
from vidllm_ext.integration.compat import output_cache
from vidllm_ext.integration.registry import adapter_for
from vidllm_ext.integration.token_drop import scene_changes

CONFIG = Path(__file__).parent / "configs" / "qwen2_5_vl_demo.json"
# LongVLM's merging at demo scale: segments of 4 temporal steps (8 frames) keep 32 tokens each.
DEMO_MERGE = MergeConfig(frames_per_segment=4, tokens_per_segment=32)
PROMPT_IDS = list(range(10, 26))  # stand-ins for a system prompt and a question (random weights)
QUESTION_IDS = list(range(30, 42))


def synthetic_clip(
    frames: int = 32, size: int = 224, seed: int = 0, device: str = "cpu"
) -> torch.Tensor:
    """uint8 [frames, size, size, 3]: a static textured background with a square moving across it,
    and a different background from the middle on (a scene cut)."""
    generator = torch.Generator().manual_seed(seed)
    backgrounds = torch.randint(0, 256, (2, size, size, 3), generator=generator, dtype=torch.uint8)
    backgrounds = backgrounds.to(device)
    clip = backgrounds[0].expand(frames, -1, -1, -1).clone()
    clip[frames // 2 :] = backgrounds[1]
    side = size // 5
    for frame in range(frames):
        top, left = (frame * 5) % (size - side), (frame * 9) % (size - side)
        clip[frame, top : top + side, left : left + side] = torch.tensor(
            [255, 40, 40], device=device
        )
    return clip


def read_video(path: str, max_frames: int = 32, max_side: int = 448) -> torch.Tensor:
    """uint8 [f, H, W, 3]: up to max_frames frames (an even count) sampled evenly from a video
    file, scaled so the longer side is at most max_side. Needs PyAV (the `video` extra)."""
    try:
        import av
    except ImportError as error:
        raise SystemExit(
            "--video needs PyAV to decode video files: pip install 'vidllm-ext[video]'"
        ) from error
    with av.open(path) as container:
        frames = [frame for frame in container.decode(video=0)]
    if len(frames) < 2:
        raise SystemExit(f"--video {path}: found {len(frames)} frame(s), need at least 2")
    count = min(max_frames, len(frames)) // 2 * 2
    picks = torch.linspace(0, len(frames) - 1, count).round().long().tolist()
    first = frames[0]
    scale = min(1.0, max_side / max(first.width, first.height))
    width, height = max(2, round(first.width * scale)), max(2, round(first.height * scale))
    arrays = [frames[i].to_ndarray(format="rgb24", width=width, height=height) for i in picks]
    return torch.from_numpy(np.stack(arrays))


def local_model(path: str, device: str):
    """(model, processor or None) from a local checkpoint folder; nothing is downloaded."""
    import transformers

    model = transformers.AutoModelForImageTextToText.from_pretrained(
        path, local_files_only=True, dtype="auto"
    )
    try:
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        processor = None
    return model.eval().to(device), processor


def processor_inputs(processor, clip: torch.Tensor, question: str, device: str) -> dict:
    """The checkpoint's own chat template and video preprocessing."""
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], videos=[clip.numpy()], return_tensors="pt")
    return {name: value.to(device) for name, value in inputs.items()}


def demo_model(device: str):
    import transformers

    settings = json.loads(CONFIG.read_text())
    for key in ("model_type", "architectures"):
        settings.pop(key)
    config = transformers.Qwen2_5_VLConfig(**settings)
    torch.manual_seed(0)
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval().to(device)


def demo_inputs(model, clip: torch.Tensor, device: str) -> dict:
    """Token ids laid out as the Qwen processor would: prompt, the video block, question."""
    adapter = adapter_for(model)
    rows, grid = adapter.preprocess_frames(clip)
    config = model.config
    video = [config.video_token_id] * adapter.tokens_per_video(grid)
    ids = [*PROMPT_IDS, config.vision_start_token_id, *video, config.vision_end_token_id]
    input_ids = torch.tensor([ids + QUESTION_IDS], device=device)
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == config.video_token_id).int() * 2,
        pixel_values_videos=rows.to(device),
        video_grid_thw=torch.tensor([grid], device=device),
    )


@dataclass
class RunResult:
    prefill_s: float
    cache_bytes: int
    cache_tokens: int
    generated: list


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            total += tensor.numel() * tensor.element_size()
    return total


def run_once(model, inputs: dict, new_tokens: int) -> RunResult:
    device = inputs["input_ids"].device
    with torch.no_grad():
        model(**inputs, use_cache=True, logits_to_keep=1)  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        output = model(**inputs, use_cache=True, logits_to_keep=1)
        _synchronize(device)
        prefill_s = time.perf_counter() - start
        generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    cache = output_cache(output)
    return RunResult(
        prefill_s,
        cache_bytes(cache),
        cache.get_seq_length(),
        generated[0, inputs["input_ids"].shape[1] :].tolist(),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_demo(
    device: str | None = None,
    threshold: float = 0.9,
    new_tokens: int = 8,
    model_path: str | None = None,
    video_path: str | None = None,
    question: str = "What happens in this video?",
) -> int:
    """Runs a video LLM unpatched, with DTD and with DTD + merging on one clip and prints the
    comparison.

    Defaults: the shipped demo model on the synthetic clip. ``model_path``: a local checkpoint
    (its processor prepares the inputs when it has one); ``video_path``: a video file.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = local_model(model_path, device) if model_path else (demo_model(device), None)
    clip = read_video(video_path) if video_path else synthetic_clip()
    if processor is not None:
        inputs = processor_inputs(processor, clip, question, device)
    elif hasattr(adapter_for(model), "preprocess_frames"):
        inputs = demo_inputs(model, clip, device)
    else:
        raise SystemExit(f"--model {model_path}: no processor found next to the checkpoint")
    dtd = DTDConfig(threshold=threshold)
    baseline = run_once(patch(model), inputs, new_tokens)
    dropped = run_once(patch(model, dtd=dtd), inputs, new_tokens)
    stats = last_stats(model)
    merge = DEMO_MERGE
    if model.config.get_text_config().hidden_size % merge.metric_chunks:
        merge = MergeConfig(merge.frames_per_segment, merge.tokens_per_segment, metric_chunks=1)
    merged = run_once(patch(model, dtd=dtd, merge=merge), inputs, new_tokens)
    merge_stats = last_stats(model, "merge")
    patch(model)
    ratios = stats.step_drop_ratios[0].tolist()
    source = model_path or f"Qwen2.5-VL demo config ({CONFIG.name}), random weights"
    scene = video_path or f"synthetic, scene cut at step {clip.shape[0] // 4}"
    print(f"model: {source}, on {device}")
    print(
        f"clip: {clip.shape[0]} frames {clip.shape[1]}x{clip.shape[2]} ({scene}); "
        f"DTD: feature cosine > {threshold} dropped; merge: segments of "
        f"{merge.frames_per_segment} steps down to {merge.tokens_per_segment} tokens\n"
    )
    runs = (baseline, dropped, merged)
    if processor is not None:
        for run in runs:
            run.generated = processor.decode(run.generated, skip_special_tokens=True)
    rows = [
        (
            "video tokens",
            stats.video_tokens_before,
            stats.video_tokens_after,
            merge_stats.video_tokens_after,
        ),
        ("prefill tokens", *(run.cache_tokens for run in runs)),
        ("prefill ms", *(f"{run.prefill_s * 1e3:.1f}" for run in runs)),
        ("KV-cache KiB", *(run.cache_bytes // 1024 for run in runs)),
        ("generated", *(run.generated for run in runs)),
    ]
    print(f"{'':16}{'unpatched':>24}  {'DTD':>24}  {'DTD + merge':>24}")
    for name, *values in rows:
        print(f"{name:16}" + "  ".join(f"{value!s:>24}" for value in values))
    print("\nper-step drop ratio: " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"scene changes (lowest drop ratio, top 10%): steps {scene_changes(ratios, 0.1)}")
    print(f"video tokens dropped: {stats.drop_ratio:.1%}")
    return 0
