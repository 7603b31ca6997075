"""A live video stream through a patched video LLM: frames in, answers out, one KV cache."""

from __future__ import annotations

import numpy as np
import torch

from vidllm_ext.contracts.frame_drop import DTDConfig
from vidllm_ext.contracts.kv_quant import KVQuantConfig
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration.compat import with_cache
from vidllm_ext.integration.frame_drop import scene_changes
from vidllm_ext.integration.kv_quant_cache import PackedKVCache
from vidllm_ext.integration.patching import NothingKept, patch, patch_of
from vidllm_ext.integration.registry import adapter_for

DEFAULT_DTD = DTDConfig()


class StreamingSession:
    """Feeds a live video to a video LLM chunk by chunk and answers questions about it.

    Every chunk is encoded once, compared with the last temporal step of the previous chunk by
    frame-difference token drop, merged segment by segment when merging is on, and only its kept
    tokens are prefilled into the session's KV cache, with the position ids one forward over the
    whole stream would give them. Questions are answered from that cache; the answer stays in
    context as a turn. A model patched with routing (``mod``) keeps its routers.

    Args:
        model: a ``*ForConditionalGeneration`` of a supported family (Qwen2-VL, Qwen2.5-VL,
            Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE, LLaVA-OneVision); the session patches
            it with ``dtd`` (replacing any earlier patch).
        processor: optional HF processor: its tokenizer encodes and decodes text and its video
            processor (when it has one) prepares frames. Without it, questions are token ids and
            answers come back as token ids; uint8 frames get the Qwen processor's default layout.
        dtd: the token-drop configuration, or None to keep every token.
        merge: a :class:`MergeConfig` to merge each segment of ``frames_per_segment`` temporal
            steps once it is complete (a question closes the open segment early), or None.
        kv: a :class:`KVQuantConfig` to hold the stream in a :class:`PackedKVCache`; by default
            the one the model was patched with (``patch(model, kv=...)``), else full precision.
        fps: frames per second of the stream (Qwen3-VL's timestamps).
        timestamp_ids: Qwen3-VL only: ``step -> token ids`` of the timestamp text written before
            each temporal step; default: the processor's tokenizer on "<{seconds:.1f} seconds>",
            or no text without a processor.

    Example:
        >>> session = vidllm_ext.StreamingSession(model, processor, dtd=DTDConfig(0.5))
        >>> for frames in camera:                   # uint8 [f, H, W, 3] each
        ...     session.append_frames(frames)
        >>> session.ask("What changed?", max_new_tokens=32)
        >>> session.scene_changes(0.1)              # steps that changed most
    """

    def __init__(
        self,
        model,
        processor=None,
        *,
        dtd: DTDConfig | None = DEFAULT_DTD,
        merge: MergeConfig | None = None,
        fps: float = 2.0,
        timestamp_ids=None,
        kv: KVQuantConfig | None = None,
    ):
        from transformers import DynamicCache

        self.adapter = adapter_for(model)
        if not getattr(self.adapter, "supports_streaming", False):
            raise NotImplementedError(
                f"StreamingSession: the {model.config.model_type!r} adapter has no streaming "
                f"support"
            )
        previous = patch_of(model)
        if kv is None and previous is not None:
            kv = previous.config("kv")
        mod = previous.config("mod") if previous is not None else None  # trained routers stay
        self.model = patch(model, dtd=dtd, merge=merge, mod=mod, kv=kv)
        self.merge = merge
        self.processor = processor
        if kv is not None:
            self.cache = PackedKVCache(kv, packed_attention=True)
        else:
            self.cache = DynamicCache(config=model.config.get_text_config())
        self.sequence: list[int] = []  # every token of the stream, dropped ones included
        self.video_grids: list[list[int]] = []  # one per video block of the sequence
        self.in_video = False
        self.step_drop_ratios: list[float] = []  # per temporal step of the stream
        self.steps_seen = 0
        self.fps = fps
        self.timestamp_ids = timestamp_ids or self._default_timestamp_ids
        self._last_step: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None  # a frame waiting for its temporal partner
        self._waiting_steps: list = []  # steps waiting for their merge segment to complete
        self._waiting_grid: list[int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def append_frames(self, frames, video_grid_thw=None) -> None:
        """Encodes and prefills new frames.

        Args:
            frames: uint8 ``[f, H, W, 3]`` (numpy or torch; an odd frame waits for the next call,
                as the model encodes frames in temporal pairs), or processed pixel rows
                ``[steps * h * w, patch_dim]`` together with ``video_grid_thw = [steps, h, w]``.

        With merging on, temporal steps wait until a whole segment of ``frames_per_segment``
        steps has arrived (or a question closes it early), and each segment is prefilled merged.
        """
        pixel_rows, grid = self._pixel_inputs(frames, video_grid_thw)
        if grid is None:
            return
        if self.merge is None:
            self._prefill_video(pixel_rows, grid)
            return
        self._waiting_steps += self.adapter.video_steps(pixel_rows, grid)
        self._waiting_grid = grid
        segment = self.merge.frames_per_segment
        while len(self._waiting_steps) >= segment:
            steps, self._waiting_steps = (
                self._waiting_steps[:segment],
                self._waiting_steps[segment:],
            )
            self._prefill_video(*self.adapter.join_steps(steps, grid))

    def _prefill_video(self, pixel_rows: torch.Tensor, grid: list[int]) -> None:
        """Prefills one chunk of video: token drop against the last step seen, then merging."""
        new_ids = self.adapter.stream_chunk_ids(
            grid, self.in_video, self.steps_seen, self.timestamp_ids
        )
        self.steps_seen += grid[0]
        if self.in_video:
            self.video_grids[-1][0] += grid[0]
        else:
            self.video_grids.append(list(grid))
            self.in_video = True
        self.sequence += new_ids
        state = patch_of(self.model)
        try:
            with state.stream_chunk(self._last_step) as step:
                pixels = pixel_rows.to(self.device)
                with self.adapter.stream_video_call(pixels, grid) as video_inputs:
                    self._forward(new_ids, **_to_device(video_inputs, self.device))
        except NothingKept:
            pass  # the whole chunk was redundant: nothing to prefill
        if step is not None and state.config("dtd") is not None:
            self._last_step = step.last_step
            self.step_drop_ratios += state.stats("dtd").step_drop_ratios[0].tolist()
        else:
            self.step_drop_ratios += [0.0] * grid[0]

    def _close_segment(self) -> None:
        """Prefills the steps still waiting for their segment to complete (a shorter segment)."""
        if self._waiting_steps:
            steps, self._waiting_steps = self._waiting_steps, []
            self._prefill_video(*self.adapter.join_steps(steps, self._waiting_grid))

    def ask(self, question, max_new_tokens: int = 32):
        """Greedy answer to ``question`` (a string with a processor, else token ids) from
        everything seen so far. Returns the decoded string (with a processor) or the int64 token
        ids; either way the answer stays in the cache, and more frames may follow."""
        self._close_segment()
        newline = self.adapter.stream_close_embedding(self.in_video)
        if newline is not None:  # LLaVA-OneVision ends a video with a learned embedding
            self.sequence.append(self.adapter.video_token_id)
            self._forward(None, inputs_embeds=newline.reshape(1, 1, -1))
        ids = self.adapter.stream_close_ids(self.in_video) + self._encode(question)
        self.in_video = False
        self.sequence += ids
        logits, positions = self._forward(ids)
        next_position = positions[..., -1:] + 1
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        answer = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            answer.append(token)
            self.sequence.append(token)
            logits, _ = self._forward([token], positions=next_position)
            next_position = next_position + 1
            if token in eos:
                break
        tokens = torch.tensor(answer, dtype=torch.long)
        return self.processor.decode(tokens) if self.processor is not None else tokens

    def scene_changes(self, top_fraction: float = 0.1) -> list[int]:
        """The stream's steps with the lowest drop ratio (the most new content): TimeChat-Online's
        trigger for proactive answers. The first step, with nothing to compare, is left out."""
        return scene_changes(self.step_drop_ratios, top_fraction)

    # ---- internals ---------------------------------------------------------------------------

    def _forward(self, ids: list[int] | None, positions=None, **inputs):
        """One forward of new tokens (ids, or inputs_embeds in ``inputs``) into the cache."""
        count = len(ids) if ids is not None else inputs["inputs_embeds"].shape[1]
        if positions is None:
            positions = self.adapter.positions(self.sequence, self.video_grids)[..., -count:]
        input_ids = torch.tensor([ids], device=self.device) if ids is not None else None
        with torch.no_grad():
            inputs = with_cache(inputs, self.cache, self.model.forward)
            output = self.model(
                input_ids=input_ids,
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=1,
                **inputs,
            )
        return output.logits, positions

    def _default_timestamp_ids(self, step: int) -> list[int]:
        if self.processor is None:
            return []
        seconds = step * self.adapter.temporal_patch / self.fps
        return self._encode(f"<{seconds:.1f} seconds>")

    def _encode(self, question) -> list[int]:
        if isinstance(question, str):
            if self.processor is None:
                raise TypeError("question: a string needs a processor; pass token ids instead")
            tokenizer = getattr(self.processor, "tokenizer", self.processor)
            return list(tokenizer(question, add_special_tokens=False)["input_ids"])
        return [int(t) for t in question]

    def _pixel_inputs(self, frames, video_grid_thw):
        """(pixel rows, grid) for new frames, or (None, None) while a lone frame waits."""
        frames = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if video_grid_thw is not None or frames.is_floating_point():
            return self.adapter.processed_video(frames, video_grid_thw)
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(
                "frames: expected uint8 [f, H, W, 3], or pixel rows with video_grid_thw, got "
                f"{frames.dtype} {list(frames.shape)}"
            )
        if self._pending is not None:
            frames = torch.cat([self._pending, frames])
        usable = frames.shape[0] - frames.shape[0] % self.adapter.temporal_patch
        self._pending = frames[usable:] if usable < frames.shape[0] else None
        if usable == 0:
            return None, None
        video_processor = getattr(self.processor, "video_processor", None)
        if video_processor is not None:
            out = video_processor(videos=[frames[:usable].numpy()], return_tensors="pt")
            grid = out.get("video_grid_thw")
            return self.adapter.processed_video(out["pixel_values_videos"], grid)
        return self.adapter.preprocess_frames(frames[:usable])


def _to_device(inputs: dict, device: torch.device) -> dict:
    return {
        name: value.to(device) if torch.is_tensor(value) else value
        for name, value in inputs.items()
    }
