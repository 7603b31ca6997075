"""Accuracy of the shipped demo video LLM on held-out demo-task clips, unpatched and with every
technique: what each keeps of the unpatched accuracy, next to the video tokens it keeps and the KV
bytes it holds (issue 19).

Each setting patches the same model (``vidllm_ext.patch``) and asks every question of each test
clip with ``vidllm_ext.demo.model.ask`` (one greedy generate per question); an answer is right
when it equals the truth. Routing is measured after a short fine-tune from the trained model with
the routers on (``MoDConfig(keep_ratio=0.2)``), beside a dense fine-tune of the same length.
Writes a markdown table and a JSON file (the CI test reads its first-100-clips figure).

    python benchmarks/accuracy_video_qa.py --clips 500 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

import vidllm_ext
from vidllm_ext import DTDConfig, KVQuantConfig, MoDConfig
from vidllm_ext.bench.facts import commit_label
from vidllm_ext.demo import model as demo_model
from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.processor import messages_for
from vidllm_ext.demo.run import DEMO_KV, QA_MERGE, cache_bytes
from vidllm_ext.demo.train import fit
from vidllm_ext.integration.compat import output_cache

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_CLIPS = 100  # the CI test's share of the test split
DTD_STRONG, DTD_MILD = 0.9, 0.99  # feature cosine thresholds (about 80% and 75% dropped)
PIXEL_THRESHOLD = 0.05  # mean |difference| of normalized pixels under a token
KV_22 = KVQuantConfig(2, 2, group_size=16, residual_length=0)


def settings() -> dict[str, dict]:
    strong = DTDConfig(DTD_STRONG)
    return {
        "unpatched": {},
        f"DTD feature/absolute {DTD_STRONG}": {"dtd": strong},
        f"DTD feature/absolute {DTD_MILD}": {"dtd": DTDConfig(DTD_MILD)},
        "DTD feature/relative 0.5": {"dtd": DTDConfig(0.5, mode="relative")},
        "DTD feature/relative 0.8": {"dtd": DTDConfig(0.8, mode="relative")},
        f"DTD pixel/absolute {PIXEL_THRESHOLD}": {"dtd": DTDConfig(PIXEL_THRESHOLD, "pixel")},
        "merge (4 steps -> 8 tokens)": {"merge": QA_MERGE},
        f"DTD {DTD_STRONG} + merge": {"dtd": strong, "merge": QA_MERGE},
        "KV 2/2": {"kv": KV_22},
        "KV 1.5/1.58": {"kv": DEMO_KV},
        "KV 1.5/1.58 salient 0.2": {"kv": replace(DEMO_KV, salient_ratio=0.2)},
        "KV 1.5/1.58 float8 scales": {"kv": replace(DEMO_KV, scale_dtype="float8_e4m3fn")},
        f"DTD {DTD_STRONG} + merge + KV 1.5/1.58": {
            "dtd": strong,
            "merge": QA_MERGE,
            "kv": DEMO_KV,
        },
    }


def ask_with_costs(model, processor, frames, question: str) -> tuple[str, int, int]:
    """(answer, video tokens the cache holds, KV bytes) of one greedy answer."""
    text = processor.apply_chat_template(messages_for(question))
    inputs = processor(text=[text], videos=[frames])
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True
        )
    prompt = inputs["input_ids"].shape[1]
    generated = output.sequences.shape[1] - prompt
    cache = output_cache(output)
    video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    # the cache holds the kept prompt and every generated token but the last
    video_kept = video - (prompt + generated - 1 - int(cache.get_seq_length()))
    answer = processor.decode(output.sequences[0, prompt:]).strip().lower()
    return answer, video_kept, cache_bytes(cache)


def measure(model, processor, seeds: list[int], name: str) -> dict:
    from tqdm import tqdm

    correct, asked = defaultdict(int), defaultdict(int)
    tokens = kv_bytes = 0
    first_correct = first_asked = 0
    for index, seed in enumerate(tqdm(seeds, desc=name[:28], unit="clip")):
        clip = demo_task.sample(seed)
        for question, truth in clip.questions:
            answer, kept, nbytes = ask_with_costs(model, processor, clip.frames, question)
            kind = demo_task.question_type(question)
            asked[kind] += 1
            correct[kind] += answer == truth
            tokens, kv_bytes = tokens + kept, kv_bytes + nbytes
            if index < FIRST_CLIPS:
                first_asked, first_correct = first_asked + 1, first_correct + (answer == truth)
    total = sum(asked.values())
    return {
        "accuracy": sum(correct.values()) / total,
        "per_type": {kind: correct[kind] / asked[kind] for kind in sorted(asked)},
        "video_tokens": tokens / total,
        "kv_bytes": kv_bytes / total,
        "first_100_accuracy": first_correct / max(1, first_asked),
        "questions": total,
    }


def fine_tuned(path, routed: bool, steps: int, lr: float) -> tuple:
    """The model after ``steps`` more training steps, routers on (keep 0.2) or dense."""
    model, processor = demo_model.load(path)
    if routed:
        vidllm_ext.patch(model, mod=MoDConfig(keep_ratio=0.2))
    # clips after the ones the shipped model was trained on
    fit(
        model,
        processor,
        steps,
        lr=lr,
        warmup=max(1, steps // 10),
        batch=16,
        first_clip=10_000_000,
        rng=random.Random(1),
        truncate=0.2,
        desc="routed fine-tune" if routed else "dense fine-tune",
    )
    return model.eval(), processor


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seeds = demo_task.seeds("test", args.clips)
    model, processor = demo_model.load(args.model)
    results = {}
    for name, techniques in settings().items():
        vidllm_ext.patch(model, **techniques)
        results[name] = measure(model, processor, seeds, name)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "per_type"}))
    vidllm_ext.patch(model)
    if args.tune_steps:
        for routed in (False, True):
            tuned, _ = fine_tuned(args.model, routed, args.tune_steps, args.tune_lr)
            name = (
                f"MoD keep 0.2 ({args.tune_steps}-step router fine-tune)"
                if routed
                else f"dense ({args.tune_steps}-step fine-tune, same data)"
            )
            results[name] = measure(tuned, processor, seeds, name)
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "per_type"}))
    return results


def markdown(results: dict, args: argparse.Namespace, minutes: float) -> str:
    base = results["unpatched"]
    lines = [
        "# Video QA accuracy of the demo model under each technique (issue 19)",
        "",
        f"- **commit**: {commit_label()}",
        f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **device**: CPU, {args.threads} thread(s); {minutes:.1f} minutes",
        f"- **clips**: the first {args.clips} of the test split ({base['questions']} questions); "
        "one greedy generate per question, right when the stripped lower-cased answer equals "
        "the truth",
        "- **video tokens**: mean per question of the video tokens the decoder's cache holds "
        "(72 unpatched: 8 steps x 9); **KV bytes**: the whole cache after the answer (float32 "
        "model; KV settings: groups of 16 tokens, no full-precision window)",
        "- **retained**: accuracy / unpatched accuracy; **loses most**: the question types "
        "whose accuracy falls most (points)",
        "",
        "| setting | accuracy | retained | video tokens | KV bytes | loses most |",
        "|:--|--:|--:|--:|--:|:--|",
    ]
    for name, result in results.items():
        losses = sorted((result["per_type"][k] - base["per_type"][k], k) for k in base["per_type"])
        worst = ", ".join(f"{k} {100 * d:+.1f}" for d, k in losses[:2] if d < 0) or "-"
        lines.append(
            f"| {name} | {100 * result['accuracy']:.1f}% | "
            f"{100 * result['accuracy'] / base['accuracy']:.1f}% | "
            f"{result['video_tokens']:.1f} | {result['kv_bytes']:.0f} | {worst} |"
        )
    kinds = list(base["per_type"])
    lines += ["", "Per question type (accuracy, %):", ""]
    lines += ["| setting | " + " | ".join(kinds) + " |", "|:--|" + "--:|" * len(kinds)]
    for name, result in results.items():
        cells = " | ".join(f"{100 * result['per_type'][k]:.1f}" for k in kinds)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune-steps", type=int, default=200, help="0: skip routing")
    parser.add_argument("--tune-lr", type=float, default=3e-4)
    parser.add_argument("--model", default=None, help="a train_demo folder (default: shipped)")
    parser.add_argument("--out", default=None, help="markdown path (default: results/...)")
    args = parser.parse_args()
    start = time.time()
    results = run(args)
    stamp = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS / f"accuracy_video_qa_{stamp}.md"
    out.write_text(markdown(results, args, (time.time() - start) / 60))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
