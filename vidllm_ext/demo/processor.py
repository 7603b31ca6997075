"""The demo model's processor: a word-level tokenizer and a Qwen2.5-VL video processor.

transformers' ``Qwen2_5_VLProcessor`` needs torchvision for video, which is not always installable
beside torch, so the package ships this documented equivalent. It produces exactly the inputs
``Qwen2_5_VLForConditionalGeneration.forward`` takes:

- ``input_ids``, ``attention_mask``: each ``<|video_pad|>`` expanded to the video's merged token
  count, rows right-padded;
- ``mm_token_type_ids``: 2 on video tokens, 0 elsewhere (the forward needs them for M-RoPE
  (t, h, w) positions; without them it falls back to 1-D positions);
- ``pixel_values_videos``: the flattened patches, float32 ``[steps * h * w, 3 * temporal *
  patch^2]``, the merge^2 patches of a token consecutive, CLIP-normalized; frames are resized to
  ``size`` x ``size``;
- ``video_grid_thw``: int64 ``[videos, 3]``.

It has the processor methods the package's demo and :class:`~vidllm_ext.StreamingSession` use:
``__call__``, ``apply_chat_template``, ``decode``, ``tokenizer``, ``video_processor``,
``save_pretrained`` and ``from_pretrained``.

Example:
    >>> processor = DemoProcessor(build_tokenizer(["what colour ?", "red"]))
    >>> text = processor.apply_chat_template(messages_for("what colour ?"))
    >>> inputs = processor(text=[text], videos=[frames])  # frames: uint8 [16, 84, 84, 3]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_PAD, VISION_START, VISION_END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
SPECIAL_TOKENS = ["<pad>", "<unk>", "</s>", VISION_START, VISION_END, VIDEO_PAD, "<|image_pad|>"]
# OpenAI CLIP normalization, the Qwen2-VL processor's default.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "vidllm_demo_processor.json"


def build_tokenizer(texts: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` over the lower-cased words of ``texts`` (split
    on whitespace and punctuation), the SPECIAL_TOKENS first (ids 0..6); unknown words map to
    ``<unk>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(t.lower())})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = splitter
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        extra_special_tokens={"video_token": VIDEO_PAD},
    )


class DemoVideoProcessor:
    """uint8 frames ``[f, H, W, 3]`` -> Qwen2.5-VL's flattened patches and grid. An odd frame
    count repeats the last frame, as the Qwen processor does."""

    def __init__(self, size: int = 84, patch_size: int = 14, merge_size: int = 2, temporal=2):
        if size % (patch_size * merge_size):
            raise ValueError(
                f"size: expected a multiple of patch_size * merge_size = "
                f"{patch_size * merge_size}, got {size}"
            )
        self.size, self.patch_size, self.merge_size = size, patch_size, merge_size
        self.temporal_patch_size = temporal

    def __call__(self, videos, return_tensors: str = "pt") -> dict:
        rows, grids = zip(*(self.patches(video) for video in videos))
        return {"pixel_values_videos": torch.cat(rows), "video_grid_thw": torch.tensor(grids)}

    def patches(self, video) -> tuple[torch.Tensor, list[int]]:
        """(pixel rows float32 [steps * h * w, 3 * temporal * patch^2], grid [steps, h, w])."""
        frames = torch.as_tensor(np.asarray(video))
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(
                f"videos: expected uint8 [f, H, W, 3] each, got {frames.dtype} {list(frames.shape)}"
            )
        extra = -frames.shape[0] % self.temporal_patch_size
        frames = torch.cat([frames, frames[-1:].expand(extra, -1, -1, -1)])
        video = frames.permute(0, 3, 1, 2).float().div(255)
        if video.shape[-2:] != (self.size, self.size):
            video = F.interpolate(video, size=(self.size, self.size), mode="bilinear")
        mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        video = (video - mean) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        steps, side = video.shape[0] // t, self.size // p
        video = video.reshape(steps, t, 3, side // m, m, p, side // m, m, p)
        rows = video.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(steps * side * side, -1)
        return rows, [steps, side, side]

    def tokens(self, grid: list[int]) -> int:
        return grid[0] * grid[1] * grid[2] // self.merge_size**2

    def to_dict(self) -> dict:
        return dict(size=self.size, patch_size=self.patch_size, merge_size=self.merge_size)


class DemoProcessor:
    """Tokenizer + video processor with the call signature of transformers' VL processors."""

    def __init__(self, tokenizer, video_processor: DemoVideoProcessor | None = None):
        self.tokenizer = tokenizer
        self.video_processor = video_processor or DemoVideoProcessor()

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False) -> str:
        """The demo model's prompt: the video block, then the question's words (no roles)."""
        parts = []
        for message in messages:
            for item in message["content"]:
                if item["type"] == "video":
                    parts.append(VISION_START + VIDEO_PAD + VISION_END)
                else:
                    parts.append(item["text"])
        return " ".join(parts)

    def __call__(self, text, videos=None, return_tensors: str = "pt", **unused) -> dict:
        """input_ids / attention_mask (rows right-padded) and the videos' patches and grids; the
        i-th ``<|video_pad|>`` of the batch becomes the i-th video's tokens."""
        texts = [text] if isinstance(text, str) else list(text)
        video_inputs = self.video_processor(videos) if videos is not None else {}
        token_counts = iter(
            [self.video_processor.tokens(g) for g in video_inputs.get("video_grid_thw", [])]
        )
        pad_id = self.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        rows = []
        for one in texts:
            ids = []
            for token in self.tokenizer(one, add_special_tokens=False)["input_ids"]:
                ids += [pad_id] * next(token_counts) if token == pad_id else [token]
            rows.append(ids)
        longest = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), longest), self.tokenizer.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row)
            attention_mask[index, : len(row)] = 1
        # text 0, video 2: without them Qwen2.5-VL's forward falls back to 1-D positions
        mm_token_type_ids = (input_ids == pad_id).int() * 2
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            **video_inputs,
        )

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, path) -> None:
        self.tokenizer.save_pretrained(path)
        (Path(path) / CONFIG_NAME).write_text(json.dumps(self.video_processor.to_dict()) + "\n")

    @classmethod
    def from_pretrained(cls, path) -> DemoProcessor:
        from transformers import PreTrainedTokenizerFast

        settings = json.loads((Path(path) / CONFIG_NAME).read_text())
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        return cls(tokenizer, DemoVideoProcessor(**settings))


def messages_for(question: str) -> list[dict]:
    """A one-turn conversation: the video, then ``question``."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
