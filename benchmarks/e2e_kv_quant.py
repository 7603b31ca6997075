"""End-to-end decode: tokens per second and cache bytes of generate, PackedKVCache vs DynamicCache.

The Qwen2.5-VL-7B *text* configuration (a Qwen2 decoder: hidden 3584, 28 heads, 4 KV heads,
head_dim 128, intermediate 18944, vocab 152064) with random weights in bfloat16 and a reduced
number of decoder layers (stated in the table), over a context of random token ids (64k by
default). For each cache: the context minus its last token is prefilled through the cache in
chunks of 8192 tokens (only the last position's logits computed), ``generate`` makes 2 tokens
(warm-up), then the timed ``generate`` makes N tokens greedily (``min_new_tokens=N``, so every
run decodes N steps; its logits must be finite). Tokens per second = N / that generate's wall
time.

``--prefill shared`` (the CPU default, where packed prefill attention is slow) fills the
PackedKVCache instead with the DynamicCache's prefilled keys and values, fed layer by layer in
the same chunks: what a full-precision prefill followed by quantization stores. With one layer
this is exactly the cache a prefill through it makes (layer 0's keys and values do not depend
on attention); with more, later layers hold full-precision-prefill keys and values. Decode
cost and cache bytes are the same either way.

- DynamicCache: transformers' cache and its sdpa attention;
- PackedKVCache(1.5/1.58, packed_attention=True): attention reads the packed codes
  (``AttentionImplementation(model.config)`` sets the model's attention function to vidllm's
  ``vidllm_packed|sdpa``, which calls ``ops.packed_attention``).

    python benchmarks/e2e_kv_quant.py       # CUDA; writes results/e2e_packed_kv_*.md
    python benchmarks/e2e_kv_quant.py --device cpu --context 4096 --layers 1   # smoke, < 1 min
    python benchmarks/e2e_kv_quant.py --family qwen3_5 --layers 8   # hybrid: 2 of 8 layers hold KV

``--family qwen3_5``: the Qwen3.5 text decoder (see model_families.py); only its full-attention
layers hold KV (packed by PackedKVCache), the Gated DeltaNet layers keep fixed-size recurrent
and convolution states, counted in both caches' bytes. Its prefill is always ``each`` (a
recurrent state cannot be copied from another cache's keys and values).

A cache whose run raises (a build without the CUDA packed-attention kernel) gets a table row
saying so; the other is still measured.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vidllm_ext import KVQuantConfig, PackedKVCache
from vidllm_ext.bench import facts, timing
from vidllm_ext.integration.kv_attention import AttentionImplementation

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_families

RESULTS = Path(__file__).resolve().parent / "results"
PREFILL_CHUNK = 8192
WARMUP_TOKENS = 2
# Qwen2.5-VL-7B's language model (text_config), as a plain Qwen2 decoder.
TEXT_7B = dict(
    model_families.QWEN2_5_VL_7B_TEXT,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)
PACKED_CONFIG = KVQuantConfig(1.5, 1.58, group_size=32, residual_length=128)
PREFILL_TEXT = {
    "each": "each cache through its own model forwards (PackedKVCache: packed attention)",
    "shared": "the DynamicCache's prefill; the PackedKVCache fed its keys and values layer by "
    "layer (its 'prefill s' is that quantization; with 1 layer the same cache as its own "
    "prefill makes)",
}


@dataclass(frozen=True)
class Run:
    """One cache's measurement; ``error`` set (and the numbers zero) when the run raised."""

    cache: str
    prefill_s: float
    decode_s: float
    new_tokens: int
    cached_tokens: int
    cache_bytes: int
    peak_bytes: int
    tokens: list[int]
    error: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s


def text_model(layers: int, device: torch.device, max_positions: int):
    """Qwen2ForCausalLM with the 7B text configuration, ``layers`` decoder layers, random
    weights (seed 0) created directly in bfloat16 on ``device``, sdpa attention."""
    import transformers

    config = transformers.Qwen2Config(
        **TEXT_7B, num_hidden_layers=layers, max_position_embeddings=max_positions
    )
    return model_families.random_bfloat16_model(transformers.Qwen2ForCausalLM, config, device)


def cache_nbytes(cache) -> int:
    """Every byte a cache holds: ``nbytes()`` of a PackedKVCache, keys + values of a
    DynamicCache's layers (and the states of its linear-attention layers)."""
    if isinstance(cache, PackedKVCache):
        return cache.nbytes()
    return model_families.linear_state_bytes(cache) + sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        if getattr(layer, "is_initialized", True) and hasattr(layer, "keys")
        for t in (layer.keys, layer.values)
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill(model, prompt: torch.Tensor, cache) -> None:
    """``prompt`` through the model into ``cache``, PREFILL_CHUNK tokens per forward."""
    for first in range(0, prompt.shape[1], PREFILL_CHUNK):
        chunk = prompt[:, first : first + PREFILL_CHUNK]
        model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=1)


def copy_prefill(source, tokens: int, cache) -> None:
    """The first ``tokens`` keys and values of each layer of ``source`` (a DynamicCache) fed to
    ``cache`` layer by layer, PREFILL_CHUNK tokens per update."""
    for index, layer in enumerate(source.layers):
        for first in range(0, tokens, PREFILL_CHUNK):
            last = min(tokens, first + PREFILL_CHUNK)
            cache.update(layer.keys[:, :, first:last], layer.values[:, :, first:last], index)


@torch.no_grad()
def measure(
    model, context: torch.Tensor, cache, fill: torch.Tensor | Callable[[], None], new_tokens: int
) -> Run:
    """Fill the cache with ``context[:, :-1]`` (timed as the prefill): ``fill()``, or when
    ``fill`` is a tensor of token ids, :func:`prefill` of it; warm up, then time ``generate`` of
    ``new_tokens`` greedy tokens."""
    device = context.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    name = type(cache).__name__
    _synchronize(device)
    start = time.perf_counter()
    if isinstance(fill, torch.Tensor):
        prefill(model, fill, cache)
    else:
        fill()
    _synchronize(device)
    prefill_s = time.perf_counter() - start

    def generate(ids: torch.Tensor, count: int) -> torch.Tensor:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=cache,
            max_new_tokens=count,
            min_new_tokens=count,
            do_sample=False,
            pad_token_id=model.config.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        made = out.sequences.shape[1] - ids.shape[1]
        if made != count:
            raise RuntimeError(f"{name}: generate made {made} tokens, not {count}")
        if not all(bool(torch.isfinite(logits).all()) for logits in out.logits):
            raise RuntimeError(f"{name}: generate's logits are not finite")
        return out.sequences

    warm = generate(context, WARMUP_TOKENS)
    _synchronize(device)
    start = time.perf_counter()
    out = generate(warm, new_tokens)
    _synchronize(device)
    decode_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return Run(
        cache=name,
        prefill_s=prefill_s,
        decode_s=decode_s,
        new_tokens=new_tokens,
        cached_tokens=cache.get_seq_length(),
        cache_bytes=cache_nbytes(cache),
        peak_bytes=peak,
        tokens=out[0, warm.shape[1] :].tolist(),
    )


def run_both(model, context: torch.Tensor, new_tokens: int, shared_prefill: bool) -> list[Run]:
    """DynamicCache with the model's sdpa attention, then PackedKVCache with vidllm's (filled by
    its own prefill, or from the DynamicCache's prefilled tokens when ``shared_prefill``)."""
    from transformers import DynamicCache

    prompt = context[:, :-1]
    dynamic = DynamicCache(config=model.config)
    runs = [_guarded("DynamicCache", lambda: measure(model, context, dynamic, prompt, new_tokens))]
    if shared_prefill and runs[0].error is not None:
        runs.append(
            _failed("PackedKVCache", "not run: --prefill shared needs the DynamicCache run")
        )
        return runs
    # Only the shared prefill reads the DynamicCache again; it is dropped once the packed cache
    # holds its tokens (with --prefill each, before the packed run), so that the packed run's
    # peak memory holds one cache.
    source = [dynamic] if shared_prefill else []
    dynamic = None
    packed = PackedKVCache(PACKED_CONFIG, packed_attention=True)

    def fill() -> None:
        if source:
            copy_prefill(source.pop(), prompt.shape[1], packed)
        else:
            prefill(model, prompt, packed)

    handle = AttentionImplementation(model.config)
    try:
        runs.append(
            _guarded("PackedKVCache", lambda: measure(model, context, packed, fill, new_tokens))
        )
    finally:
        handle.remove()
    return runs


def _failed(cache: str, error: str) -> Run:
    return Run(cache, 0.0, 0.0, 0, 0, 0, 0, [], error)


def _guarded(cache: str, run: Callable[[], Run]) -> Run:
    """``run()``, or a Run carrying the error when it raises; frees the GPU's cached memory."""
    print(f"e2e_kv_quant: {cache} ...", file=sys.stderr, flush=True)
    try:
        return run()
    except Exception as exc:  # reported in the table (e.g. a build without the CUDA kernel)
        return _failed(cache, timing.compile_failure(exc))
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def report(runs: list[Run], args, device: torch.device) -> str:
    """The results as markdown: facts, one row per cache, the comparison."""
    config = PACKED_CONFIG
    lines = [
        "# End-to-end packed KV cache benchmark: decode tokens per second and cache bytes",
        "",
        f"- **device**: {facts.device_name(device)}",
        f"- **commit**: {facts.commit_label()}",
        f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **torch**: {torch.__version__}",
        f"- **model**: {model_line(args)}",
        f"- **context**: {args.context} random token ids (the last one fed by generate), "
        f"prefilled in chunks of {PREFILL_CHUNK}; then generate {WARMUP_TOKENS} tokens "
        f"(warm-up) and the timed generate of {args.new_tokens} greedy tokens "
        "(min_new_tokens = max_new_tokens)",
        f"- **prefill**: {PREFILL_TEXT[args.prefill]}",
        f"- **PackedKVCache**: key_bits {config.key_bits:g}, value_bits {config.value_bits:g}, "
        f"group {config.group_size}, residual {config.residual_length}, key_transform "
        f"{config.key_transform}, packed_attention=True (attention vidllm_packed|sdpa)",
        "",
        "| cache | cached tokens | prefill s | decode s | tokens/s | cache MB "
        "| peak GiB (with weights) |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        if r.error is not None:
            lines.append(f"| {r.cache} | failed: {r.error} | | | | | |")
            continue
        peak = f"{r.peak_bytes / 2**30:.2f}" if device.type == "cuda" else "n/a"
        lines.append(
            f"| {r.cache} | {r.cached_tokens} | {r.prefill_s:.2f} | {r.decode_s:.3f} "
            f"| {r.tokens_per_s:.2f} | {r.cache_bytes / 1e6:.1f} | {peak} |"
        )
    lines.append("")
    dynamic, packed = runs
    if dynamic.error is None and packed.error is None:
        same = sum(a == b for a, b in zip(dynamic.tokens, packed.tokens))
        lines += [
            f"- PackedKVCache vs DynamicCache: {packed.tokens_per_s / dynamic.tokens_per_s:.2f}x "
            f"tokens/s, {dynamic.cache_bytes / packed.cache_bytes:.2f}x fewer cache bytes",
            f"- greedy tokens equal to DynamicCache's at the same step: {same} of "
            f"{len(packed.tokens)} (random weights: informative only)",
        ]
    return "\n".join(lines) + "\n"


def model_line(args) -> str:
    if args.family == "qwen3_5":
        return model_families.describe("qwen3_5", args.layers) + " (text decoder), bfloat16"
    return (
        "Qwen2.5-VL-7B text configuration (Qwen2: hidden 3584, 28 heads, 4 KV heads, head_dim "
        f"128, intermediate 18944, vocab 152064), {args.layers} of 28 decoder layers, random "
        "weights, bfloat16"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--context", type=int, default=65536, help="context tokens")
    parser.add_argument("--family", choices=model_families.FAMILIES, default="qwen2_5_vl")
    parser.add_argument("--layers", type=int, help="decoder layers kept (default 2; qwen3_5 4)")
    parser.add_argument("--new-tokens", type=int, help="timed tokens (default: 128 CUDA, 4 CPU)")
    parser.add_argument(
        "--prefill",
        choices=("each", "shared"),
        help="fill the PackedKVCache by its own prefill (default on CUDA) or from the "
        "DynamicCache's prefilled keys and values (default on CPU)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    problem = facts.cuda_problem(device)
    if problem:
        print(f"e2e_kv_quant: skipped, {problem}")
        return 0
    hybrid = args.family == "qwen3_5"
    args.layers = args.layers or (4 if hybrid else 2)
    model_families.check_layers(args.family, args.layers)
    if hybrid and args.prefill == "shared":
        parser.error("--prefill shared: a Qwen3.5 recurrent state cannot be copied; use each")
    if args.context < 2 or args.layers < 1:
        parser.error("--context must be >= 2 and --layers >= 1")
    args.new_tokens = args.new_tokens or (128 if device.type == "cuda" else 4)
    args.prefill = args.prefill or ("each" if device.type == "cuda" or hybrid else "shared")
    max_positions = args.context + WARMUP_TOKENS + args.new_tokens
    build = model_families.qwen3_5_text_model if hybrid else text_model
    model = build(args.layers, device, max(max_positions, 32768))
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.vocab_size
    context = torch.randint(0, vocab, (1, args.context), generator=generator)
    runs = run_both(model, context.to(device), args.new_tokens, args.prefill == "shared")
    text = report(runs, args, device)
    print(text)
    path = args.markdown
    if path is None and device.type == "cuda":
        slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        path = RESULTS / f"e2e_packed_kv_{slug}_{today}.md"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
