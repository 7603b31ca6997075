"""End-to-end: time to first token and peak memory of a video LLM, unpatched vs DTD-patched.

The real Qwen2.5-VL-7B configuration with random weights in bfloat16 (decoder layers reduced, as
stated in the output; the vision tower is whole), on synthetic streams of 128 and 512 temporal
steps of 256 tokens (448 x 448 frames, two per step): a static textured background, a moving
square and a scene cut. DTD: feature method, cosine threshold 0.5. Both runs in one process on the
same inputs. Target (TimeChat-Online): >= 1.76x lower time to first token at ~81% drop.

    python benchmarks/e2e_frame_drop.py                 # GPU; results in benchmarks/results/
    python benchmarks/e2e_frame_drop.py --tiny          # CPU smoke run on the demo config
    python benchmarks/e2e_frame_drop.py --family qwen3_5 --layers 8   # Qwen3.5
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import vidllm_ext
from vidllm_ext.demo.run import demo_inputs, random_model, synthetic_clip

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_families

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SPEEDUP = 1.76
TEXT_7B = dict(
    model_families.QWEN2_5_VL_7B_TEXT,
    max_position_embeddings=262144,
    pad_token_id=151643,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],
    },
)


def model_7b(layers: int, device: str):
    import transformers

    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(TEXT_7B, num_hidden_layers=layers),
        vision_config=model_families.QWEN2_5_VL_7B_VISION,
        **model_families.QWEN2_5_VL_7B_IDS,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    return model.to(torch.bfloat16).eval()


def time_to_first_token(model, inputs: dict, repeats: int) -> tuple[float, int]:
    """(median seconds of a 1-token generate, peak bytes allocated on the GPU)."""
    device = inputs["input_ids"].device
    samples = []
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(samples[1:]), peak


def build(family: str, layers: int, device: str, tiny: bool):
    if family == "qwen3_5":
        dtype = torch.float32 if tiny else torch.bfloat16
        return model_families.qwen3_5_model(layers, device, dtype, tiny=tiny)
    return random_model(device) if tiny else model_7b(layers, device)


def run(steps_list, layers, threshold, device, tiny, repeats, family="qwen2_5_vl") -> list[dict]:
    model = build(family, layers, device, tiny)
    size = 224 if tiny else 448
    rows = []
    for steps in steps_list:
        print(f"e2e_frame_drop: {steps} steps ...", file=sys.stderr, flush=True)
        clip = synthetic_clip(frames=2 * steps, size=size, device=device)
        inputs = demo_inputs(model, clip, device)
        if not tiny:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(torch.bfloat16)
        del clip
        baseline_s, baseline_peak = time_to_first_token(vidllm_ext.patch(model), inputs, repeats)
        dtd = vidllm_ext.DTDConfig(threshold=threshold)
        dtd_s, dtd_peak = time_to_first_token(vidllm_ext.patch(model, dtd=dtd), inputs, repeats)
        stats = vidllm_ext.last_stats(model)
        rows.append(
            dict(
                steps=steps,
                video_tokens=stats.video_tokens_before,
                drop=stats.drop_ratio,
                baseline_s=baseline_s,
                dtd_s=dtd_s,
                baseline_peak=baseline_peak,
                dtd_peak=dtd_peak,
            )
        )
    return rows


def report(rows, layers, device, tiny, family="qwen2_5_vl") -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    if tiny:
        model = f"{family} tiny config (CPU smoke run)"
    elif family == "qwen3_5":
        model = model_families.describe(family, layers) + ", full vision tower, bf16"
    else:
        model = (
            f"Qwen2.5-VL-7B config, {layers} of 28 decoder layers, full vision tower, bf16, "
            "random weights"
        )
    tokens_per_step = rows[0]["video_tokens"] // rows[0]["steps"] if rows else 0
    lines = [
        "# End-to-end DTD benchmark: time to first token",
        "",
        f"- **device**: {name}",
        f"- **commit**: {vidllm_ext.build_info()['git_commit']}",
        f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **torch**: {torch.__version__}",
        f"- **model**: {model}",
        f"- **stream**: synthetic, {tokens_per_step} tokens per step, static background, moving "
        "square, one scene cut",
        "",
        "| steps | video tokens | dropped | TTFT unpatched ms | TTFT DTD ms | speedup "
        "| peak GiB unpatched | peak GiB DTD |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['video_tokens']} | {r['drop']:.1%} | {r['baseline_s'] * 1e3:.1f} "
            f"| {r['dtd_s'] * 1e3:.1f} | {r['baseline_s'] / r['dtd_s']:.2f}x "
            f"| {r['baseline_peak'] / 2**30:.2f} | {r['dtd_peak'] / 2**30:.2f} |"
        )
    lines.append("")
    for r in rows:
        speedup = r["baseline_s"] / r["dtd_s"]
        verdict = "PASS" if speedup >= TARGET_SPEEDUP else "MISS"
        lines.append(
            f"target >= {TARGET_SPEEDUP}x lower TTFT (TimeChat-Online, ~81% drop), {r['steps']} "
            f"steps at {r['drop']:.1%} drop: {speedup:.2f}x {verdict}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--family", choices=model_families.FAMILIES, default="qwen2_5_vl")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers kept")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the demo config")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("e2e_frame_drop: skipped, torch sees no CUDA device (use --tiny for a CPU smoke run)")
        return 0
    model_families.check_layers(args.family, args.layers)
    steps = args.steps or ([4, 8] if args.tiny else [128, 512])
    rows = run(steps, args.layers, args.threshold, device, args.tiny, args.repeats, args.family)
    text = report(rows, args.layers, device, args.tiny, args.family)
    print(text)
    if not args.tiny:
        slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
        family = "" if args.family == "qwen2_5_vl" else f"{args.family}_"
        path = RESULTS / f"e2e_dtd_{family}{slug}_{datetime.date.today().isoformat()}.md"
        path.write_text(text)
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
