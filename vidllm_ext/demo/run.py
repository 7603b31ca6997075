"""`vidllm-ext demo`: a video LLM answering questions about a clip unpatched, with
frame-difference token drop, with token drop followed by hierarchical merging, and with the
1.5/1.58-bit packed KV cache, side by side with what each costs (tokens, prefill time, KV bytes).

By default the shipped demo model (:mod:`vidllm_ext.demo.model`, a small Qwen2.5-VL trained on
:mod:`vidllm_ext.demo.task`) watches a clip of that task and answers its questions, next to the
true answers; a PNG strip of the frames shows the tokens DTD dropped greyed out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidllm_ext.contracts.kv_quant import KVQuantConfig
from vidllm_ext.demo import model as demo_model
from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.processor import CONFIG_NAME, DemoProcessor
from vidllm_ext.demo.strip import save_strip, token_keep_mask
from vidllm_ext.integration import DTDConfig, MergeConfig, last_stats, patch
from vidllm_ext.integration.compat import cache_kwargs, output_cache
from vidllm_ext.integration.frame_drop import scene_changes
from vidllm_ext.integration.kv_quant_cache import PackedKVCache
from vidllm_ext.integration.registry import adapter_for

CONFIG = Path(__file__).parent / "configs" / "qwen2_5_vl_demo.json"
# LongVLM's merging at demo scale: segments of 4 temporal steps (8 frames) keep 32 tokens each.
DEMO_MERGE = MergeConfig(frames_per_segment=4, tokens_per_segment=32)
# The trained demo model sees 9 tokens per step: segments of 4 steps keep 8 tokens.
QA_MERGE = MergeConfig(frames_per_segment=4, tokens_per_segment=8)
QA_THRESHOLD = 0.9  # feature cosine above which DTD drops a token (benchmarks/accuracy_video_qa.py)
# VidKV's 1.5-bit keys / 1.58-bit values; groups of 16 tokens and no full-precision window, so
# a short clip's prompt is quantized too.
DEMO_KV = KVQuantConfig(1.5, 1.58, group_size=16, residual_length=0)
DEMO_SEED = demo_task.seeds("test", 1, start=5)[0]  # three objects, a cut at step 6
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
    """(model, processor or None) from a local checkpoint folder; nothing is downloaded. A folder
    written by ``python -m vidllm_ext.demo.train`` loads with the demo model's processor."""
    import transformers

    if (Path(path) / CONFIG_NAME).is_file():
        return demo_model.load(path, device)
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
    inputs = processor(text=[text], videos=[np.asarray(clip)], return_tensors="pt")
    return {name: value.to(device) for name, value in inputs.items()}


def random_model(device: str):
    """The Qwen2.5-VL of CONFIG with random weights (fixed seed): real costs, noise answers
    (benchmarks/e2e_frame_drop.py's tiny model)."""
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
    # One block per video (Qwen2/2.5-VL) or per temporal step (Qwen3-VL, Qwen3.5), no timestamps.
    video = adapter.stream_chunk_ids(grid, False, 0, lambda step: [])
    ids = [*PROMPT_IDS, *video, *adapter.stream_close_ids(True)]
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
    answers: list


def cache_bytes(cache) -> int:
    if isinstance(cache, PackedKVCache):
        return cache.nbytes()  # codes, scales and the full-precision window
    total = 0
    for layer in cache.layers:  # a hybrid decoder's linear-attention layers hold no KV
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def run_setting(model, techniques: dict, prompts: list, new_tokens: int, processor) -> RunResult:
    """Patches ``model`` with ``techniques``, times the first prompt's prefill and answers every
    prompt greedily."""
    patch(model, **techniques)
    device = prompts[0]["input_ids"].device
    kv = techniques.get("kv")

    def prefill():
        cache = {} if kv is None else cache_kwargs(model, PackedKVCache(kv, packed_attention=True))
        return model(**prompts[0], use_cache=True, logits_to_keep=1, **cache)

    with torch.no_grad():
        prefill()  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        output = prefill()
        _synchronize(device)
        prefill_s = time.perf_counter() - start
        answers = []
        for inputs in prompts:
            generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            new = generated[0, inputs["input_ids"].shape[1] :]
            answers.append(
                processor.decode(new, skip_special_tokens=True).strip().lower()
                if processor is not None
                else new.tolist()
            )
    cache = output_cache(output)
    return RunResult(prefill_s, cache_bytes(cache), int(cache.get_seq_length()), answers)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_model(device: str):
    """(model, processor, description): the shipped trained model, or, when its weights are
    missing (a source checkout before training), the same architecture with random weights."""
    try:
        model, processor = demo_model.load(device=device)
        return model, processor, "vidllm_ext demo model (Qwen2.5-VL trained on demo_task)"
    except FileNotFoundError:
        model = demo_model.build_model().to(device)
        return model, demo_model.build_processor(), "demo model architecture, RANDOM weights"


def run_demo(
    device: str | None = None,
    threshold: float | None = None,
    new_tokens: int = 4,
    model_path: str | None = None,
    video_path: str | None = None,
    question: str | None = None,
    seed: int | None = None,
    strip_path: str | None = "demo_strip.png",
) -> int:
    """Answers questions about one clip unpatched, with DTD, with DTD + merging and with the
    1.5/1.58-bit KV cache, and prints answers and costs side by side.

    Defaults: the shipped demo model on the demo task's clip of ``seed`` (default DEMO_SEED, a
    test clip) and its questions.
    ``model_path``: a local checkpoint (its processor prepares the inputs when it has one);
    ``video_path``: a video file; ``question``: ask this instead of the task's questions.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    seed = DEMO_SEED if seed is None else seed
    if model_path:
        model, processor = local_model(model_path, device)
        source = model_path
    else:
        model, processor, source = default_model(device)
    trained_demo = isinstance(processor, DemoProcessor)
    task_clip = None if video_path else demo_task.sample(seed)
    clip = read_video(video_path) if video_path else torch.from_numpy(task_clip.frames)
    questions = _questions(question, task_clip, trained_demo, processor)
    if processor is not None:
        prompts = [processor_inputs(processor, clip, text, device) for text, _ in questions]
    elif hasattr(adapter_for(model), "preprocess_frames"):
        prompts, questions = [demo_inputs(model, clip, device)], [("(token ids)", None)]
    else:
        raise SystemExit(f"--model {model_path}: no processor found next to the checkpoint")
    dtd = DTDConfig(threshold=threshold or (QA_THRESHOLD if trained_demo else 0.9))
    merge = QA_MERGE if trained_demo else DEMO_MERGE
    if model.config.get_text_config().hidden_size % merge.metric_chunks:
        merge = MergeConfig(merge.frames_per_segment, merge.tokens_per_segment, metric_chunks=1)
    settings = {
        "unpatched": {},
        "DTD": {"dtd": dtd},
        "DTD + merge": {"dtd": dtd, "merge": merge},
        "KV 1.5/1.58": {"kv": DEMO_KV},
    }
    runs, stats = {}, None
    for name, techniques in settings.items():
        runs[name] = run_setting(model, techniques, prompts, new_tokens, processor)
        if name == "DTD":
            stats = last_stats(model)
    patch(model)
    scene = video_path or (
        f"demo_task seed {seed}, "
        + (f"scene cut at step {task_clip.cut_step}" if task_clip.cut_step else "no scene cut")
    )
    print(f"model: {source}, on {device}")
    print(
        f"clip: {clip.shape[0]} frames {clip.shape[1]}x{clip.shape[2]} ({scene}); "
        f"DTD: feature cosine > {dtd.threshold} dropped; merge: segments of "
        f"{merge.frames_per_segment} steps down to {merge.tokens_per_segment} tokens; KV: "
        f"{DEMO_KV.key_bits:g}-bit keys, {DEMO_KV.value_bits:g}-bit values\n"
    )
    _print_table(runs, prompts, questions, model.config.video_token_id)
    ratios = stats.step_drop_ratios[0].tolist()
    print("\nper-step drop ratio: " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"scene changes (lowest drop ratio, top 10%): steps {scene_changes(ratios, 0.1)}")
    print(f"video tokens dropped: {stats.drop_ratio:.1%}")
    if strip_path and "pixel_values_videos" in prompts[0]:
        keep = token_keep_mask(model, prompts[0], dtd)
        print(f"frames with dropped tokens greyed: {save_strip(clip.numpy(), keep, strip_path)}")
    return 0


def _questions(question, task_clip, trained_demo: bool, processor) -> list[tuple]:
    """(question, true answer or None) pairs to ask."""
    if question:
        return [(question, None)]
    if task_clip is not None and processor is not None:
        return list(task_clip.questions)
    if trained_demo:  # a video file: the task's questions that need no scene cut
        return [(demo_task.QUESTIONS[kind], None) for kind in ("colour", "direction", "count")]
    return [("What happens in this video?", None)]


def _print_table(runs: dict, prompts: list, questions: list, video_token_id: int) -> None:
    video_tokens = int((prompts[0]["input_ids"] == video_token_id).sum())
    full = runs["unpatched"].cache_tokens
    rows = [
        ("video tokens", *(video_tokens - (full - run.cache_tokens) for run in runs.values())),
        ("prefill tokens", *(run.cache_tokens for run in runs.values())),
        ("prefill ms", *(f"{run.prefill_s * 1e3:.1f}" for run in runs.values())),
        ("KV-cache KiB", *(f"{run.cache_bytes / 1024:.1f}" for run in runs.values())),
    ]
    width = max(14, *(len(str(a)) for run in runs.values() for a in run.answers))
    for index, (text, truth) in enumerate(questions):
        print(f"Q{index + 1}: {text}" + (f"  (true answer: {truth})" if truth else ""))
        answers = [run.answers[index] for run in runs.values()]
        rows.append((f"Q{index + 1} answer", *answers))
    print(f"\n{'':16}" + "  ".join(f"{name:>{width}}" for name in runs))
    for name, *values in rows:
        print(f"{name:16}" + "  ".join(f"{value!s:>{width}}" for value in values))
