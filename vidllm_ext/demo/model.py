"""The shipped demo model: a small Qwen2.5-VL trained from scratch on :mod:`vidllm_ext.demo.task`
(``python -m vidllm_ext.demo.train``), with its word-level tokenizer and processor.

Example:
    >>> model, processor = load()
    >>> clip = vidllm_ext.demo.task.sample(7)
    >>> ask(model, processor, clip.frames, clip.questions[0][0])
    'red'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.processor import DemoProcessor, build_tokenizer, messages_for

CONFIG = Path(__file__).parent / "configs" / "qwen2_5_vl_video_qa.json"
WEIGHTS = Path(__file__).parent / "weights"
# Words beyond the task's, so a free-form question (the demo's --video) tokenizes without <unk>.
EXTRA_TEXT = "what happens in this video ?"


def task_texts() -> list[str]:
    """Every question and answer of the task: the tokenizer's vocabulary."""
    answers = [*demo_task.COLOURS, *demo_task.DIRECTIONS, *demo_task.CROSS, "1", "2", "3"]
    answers += [str(step) for step in demo_task.CUT_STEPS]
    return [*demo_task.QUESTIONS.values(), *answers, EXTRA_TEXT]


def build_processor() -> DemoProcessor:
    """A fresh processor for the task (the same one every time: the vocabulary is sorted)."""
    return DemoProcessor(build_tokenizer(task_texts()))


def build_model(seed: int = 0):
    """The demo Qwen2.5-VL with random weights (float32, eval mode), from CONFIG."""
    import transformers

    settings = json.loads(CONFIG.read_text())
    for key in ("model_type", "architectures"):
        settings.pop(key)
    config = transformers.Qwen2_5_VLConfig(**settings)
    torch.manual_seed(seed)
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval()


def load(path: str | Path | None = None, device: str = "cpu"):
    """(model, processor) from ``path`` (default: the weights shipped in the package); reads local
    files only, never the network."""
    import transformers

    folder = Path(path) if path is not None else WEIGHTS
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no demo model in {folder} (model.safetensors missing): train one with "
            "`python -m vidllm_ext.demo.train --out DIR` and load(DIR)"
        )
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, dtype=torch.float32
    )
    return model.eval().to(device), DemoProcessor.from_pretrained(folder)


def ask(model, processor, frames, question: str, max_new_tokens: int = 4) -> str:
    """The model's greedy answer to ``question`` about ``frames`` (uint8 [f, H, W, 3]), stripped
    and lower-cased. Works the same on a model patched with any technique (``vidllm_ext.patch``).
    """
    text = processor.apply_chat_template(messages_for(question))
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in processor(text=[text], videos=[frames]).items()}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = output[0, inputs["input_ids"].shape[1] :]
    return processor.decode(answer, skip_special_tokens=True).strip().lower()
