"""Trains the demo video QA model from scratch on the CPU: ``python -m vidllm_ext.demo.train``.

Every step draws fresh clips from the task's train split. A clip becomes one sequence: the video
block, then all its questions in a random order, each followed by its answer and ``</s>``; the
loss is on answers and ``</s>`` only. The first question of a sequence sees exactly what
:func:`vidllm_ext.demo.model.ask` gives the model. AdamW, linear warm-up then cosine decay,
gradient clipping. Saves the model and processor (``save_pretrained``), ``loss.png`` and
``metrics.json`` in ``--out``; ``--smoke`` runs a few steps of a tiny batch.

Example:
    python -m vidllm_ext.demo.train --steps 3000 --out vidllm_ext/demo/weights
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.augment import hide_dropped_tokens
from vidllm_ext.demo.model import build_model, build_processor
from vidllm_ext.demo.processor import VIDEO_PAD, VISION_END, VISION_START

IGNORE = -100


def visible_questions(clip: demo_task.Clip, steps: int) -> list[tuple[str, str]]:
    """The questions of ``clip`` still answerable from its first ``steps`` temporal steps: the
    moving object's colour, direction and the count always (2 steps or more); where it ends up
    once the first scene is over; the cut and what follows it once a step after the cut is in."""
    full = demo_task.FRAMES // demo_task.FRAMES_PER_STEP
    if steps >= full:
        return list(clip.questions)
    kinds = {"colour", "direction", "count"}
    if clip.cut_step is not None and steps > clip.cut_step:
        kinds |= {"where", "cut", "after"}
    return [(q, a) for q, a in clip.questions if demo_task.question_type(q) in kinds]


def clip_sequence(processor, clip: demo_task.Clip, steps: int, rng: random.Random):
    """(token ids, labels, answer types) of the first ``steps`` temporal steps of a clip and
    the questions they answer; labels are IGNORE outside answers."""
    tokenizer = processor.tokenizer
    video_tokens = processor.video_processor.tokens([steps, 6, 6])
    special = tokenizer.convert_tokens_to_ids([VISION_START, VIDEO_PAD, VISION_END])
    ids = [special[0], *[special[1]] * video_tokens, special[2]]
    labels = [IGNORE] * len(ids)
    kinds = []
    questions = visible_questions(clip, steps)
    for question, answer in rng.sample(questions, len(questions)):
        asked = tokenizer(question, add_special_tokens=False)["input_ids"]
        answered = [
            *tokenizer(answer, add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id,
        ]
        ids += asked + answered
        labels += [IGNORE] * len(asked) + answered
        kinds.append(demo_task.question_type(question))
    return ids, labels, kinds


def make_batch(
    processor, seeds: list[int], rng: random.Random, truncate: float = 0.0
) -> tuple[dict, list[str]]:
    """Forward inputs (with ``labels``) for the clips of ``seeds``, rows right-padded; a share
    ``truncate`` of the clips is cut to its first 2..7 temporal steps (a stream seen so far)."""
    clips = [demo_task.sample(seed) for seed in seeds]
    full = demo_task.FRAMES // demo_task.FRAMES_PER_STEP
    steps = [rng.randint(2, full - 1) if rng.random() < truncate else full for _ in clips]
    rows = [clip_sequence(processor, c, n, rng) for c, n in zip(clips, steps)]
    longest = max(len(ids) for ids, _, _ in rows)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), longest), pad)
    labels = torch.full((len(rows), longest), IGNORE)
    attention_mask = torch.zeros_like(input_ids)
    for index, (ids, row_labels, _) in enumerate(rows):
        input_ids[index, : len(ids)] = torch.tensor(ids)
        labels[index, : len(ids)] = torch.tensor(row_labels)
        attention_mask[index, : len(ids)] = 1
    frames = [c.frames[: n * demo_task.FRAMES_PER_STEP] for c, n in zip(clips, steps)]
    video = processor.video_processor(frames)
    video_id = processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    batch = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=(input_ids == video_id).int() * 2,  # M-RoPE positions for video
        labels=labels,
        **video,
    )
    return batch, [kind for _, _, kinds in rows for kind in kinds]


def answer_accuracy(model, batch: dict, kinds: list[str]) -> dict[str, float]:
    """Teacher-forced accuracy of each answer's first token, per question type."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"]
    is_first = (labels[:, 1:] != IGNORE) & (labels[:, :-1] == IGNORE)
    predicted = logits[:, :-1].argmax(-1)[is_first]
    right = (predicted == labels[:, 1:][is_first]).tolist()
    totals: dict[str, list[int]] = {}
    for kind, hit in zip(kinds, right):
        totals.setdefault(kind, []).append(hit)
    return {kind: sum(hits) / len(hits) for kind, hits in sorted(totals.items())}


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_loss_curve(losses: list[float], path: Path) -> None:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "train_demo plots its loss curve with matplotlib: pip install matplotlib (or the "
            "package's `train` extra)"
        ) from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - window) : i + 1]) / len(losses[max(0, i - window) : i + 1])
        for i in range(len(losses))
    ]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(losses, alpha=0.3, label="loss (answer tokens)")
    axes.plot(smooth, label=f"mean of {window} steps")
    axes.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="demo model training")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def fit(
    model,
    processor,
    steps: int,
    *,
    lr: float,
    warmup: int,
    batch: int,
    first_clip: int,
    rng: random.Random,
    truncate: float = 0.0,
    drop: float = 0.0,
    feature_share: float = 0.0,
    on_step=None,
    desc: str = "train",
) -> list:
    """``steps`` AdamW steps (warm-up, cosine decay, clipping at 1) on fresh train clips from
    the ``first_clip``-th on, a share ``drop`` of the clips with the tokens DTD would drop
    hidden (:mod:`vidllm_ext.demo.augment`); trains every parameter that requires a gradient.
    ``on_step(step,
    loss, bar)`` runs after each step. Returns the losses."""
    from tqdm import tqdm

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup)
        seeds = demo_task.seeds("train", batch, start=first_clip + step * batch)
        inputs, _ = make_batch(processor, seeds, rng, truncate)
        hidden_rows = [row for row in range(batch) if rng.random() < drop]
        inputs = hide_dropped_tokens(model, inputs, hidden_rows, rng, feature_share)
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            on_step(step, losses[-1], bar)
    return losses


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    if args.init:  # continue from a checkpoint of this script
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
    else:
        model = build_model(args.seed)
    rng = random.Random(args.seed)
    validation = make_batch(processor, demo_task.seeds("validation", args.val_clips), rng)
    losses, history, start = [], [], time.time()

    def on_step(step: int, loss: float, bar) -> None:
        losses.append(loss)
        if (step + 1) % args.val_every and step + 1 != args.steps:
            return
        model.eval()
        scores = answer_accuracy(model, *validation)
        model.train()
        history.append({"step": step + 1, "minutes": (time.time() - start) / 60, **scores})
        bar.write(f"step {step + 1}: loss {loss:.3f} " + json.dumps(scores))
        save_loss_curve(losses, out / "loss.png")
        model.save_pretrained(out)  # a usable checkpoint if the run is stopped early

    fit(
        model,
        processor,
        args.steps,
        lr=args.lr,
        warmup=args.warmup,
        batch=args.batch,
        first_clip=args.first_clip,
        rng=rng,
        truncate=args.truncate,
        drop=args.drop,
        feature_share=args.feature_share,
        on_step=on_step,
    )
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    metrics = dict(vars(args), minutes=(time.time() - start) / 60, validation=history)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vidllm_ext.demo.train", description=__doc__)
    parser.add_argument("--out", default="demo_model", help="folder for weights, loss.png")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16, help="clips per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--feature-share", type=float, default=0.0, help="of those, hidden by feature DTD"
    )
    parser.add_argument("--init", default=None, help="continue from this checkpoint folder")
    parser.add_argument("--first-clip", type=int, default=0, help="first train clip index")
    parser.add_argument("--truncate", type=float, default=0.2, help="share of clips cut short")
    parser.add_argument("--drop", type=float, default=0.3, help="share with DTD's tokens hidden")
    parser.add_argument("--val-clips", type=int, default=64)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few steps of 2 clips (CI)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.warmup, args.val_clips, args.val_every = 4, 2, 2, 4, 2
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
