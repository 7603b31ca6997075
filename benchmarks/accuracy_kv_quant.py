"""Accuracy of the sub-2-bit KV configurations against float16, next to VidKV's released behaviour.

For each configuration: relative error (||x^ - x|| / ||x||) of keys, values and the attention
output (float32 softmax attention of random queries over the cache), on
- synthetic KV with outlier channels: heavy-tailed values, a few channels 10-50x larger;
- KV captured from a small random Qwen2 model (prefill of random tokens, every layer).
"VidKV released" dequantizes as VidKV's public code does: its 1-bit and ternary dequantizers drop
the scale (y^ = +-1, x^ = t), which is what that code's accuracy reflects.

Usage: python benchmarks/accuracy_kv_quant.py [--out benchmarks/results/kv_accuracy_<date>.md]
"""

from __future__ import annotations

import argparse
import datetime
import math
from dataclasses import replace

import torch

from vidllm_ext import KVQuantConfig, ops
from vidllm_ext.bench.facts import commit_label

CONFIGS = {
    "KIVI 2/2 token-wise values": KVQuantConfig(2, 2, value_axis="token"),
    "2/2 channel-wise values": KVQuantConfig(2, 2),
    "2/1.58": KVQuantConfig(2, 1.58),
    "1.5/2 fft": KVQuantConfig(1.5, 2, key_transform="fft"),
    "1.5/2 hadamard": KVQuantConfig(1.5, 2, key_transform="hadamard"),
    "1.5/2 none": KVQuantConfig(1.5, 2, key_transform="none"),
    "1.5/1.58": KVQuantConfig(1.5, 1.58),
    "1.5/1.58 salient 0.2": KVQuantConfig(1.5, 1.58, salient_ratio=0.2),
    "1.5/1.58 group 64": KVQuantConfig(1.5, 1.58, group_size=64),
    "1.5/1.58 group 128": KVQuantConfig(1.5, 1.58, group_size=128),
}


def outlier_kv(tokens: int, heads: int = 4, dim: int = 128, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    shape = (1, heads, tokens, dim)

    def heavy():
        return torch.randn(shape, generator=g) * (1 + 0.5 * torch.randn(shape, generator=g).abs())

    keys, values = heavy(), heavy()
    for head in range(heads):
        channels = torch.randperm(dim, generator=g)[:4]
        factors = 10 + 40 * torch.rand(4, generator=g)
        keys[0, head, :, channels] *= factors
        values[0, head, :, channels[:2]] *= factors[:2] / 4
    return keys.half(), values.half()


def model_kv(tokens: int, seed: int = 0) -> list[tuple]:
    import transformers

    config = transformers.Qwen2Config(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=1000,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 1000, (1, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    return [(layer.keys.half(), layer.values.half()) for layer in cache.layers]


def salient_mask(keys: torch.Tensor, ratio: float) -> torch.Tensor:
    """Stand-in salience without a prompt: the tokens with the largest value norms (synthetic)."""
    tokens = keys.shape[2]
    count = math.ceil(ratio * tokens)
    score = keys.float().norm(dim=-1).mean(1)[0]
    mask = torch.zeros(1, tokens, dtype=torch.bool)
    mask[0, torch.sort(score, descending=True, stable=True).indices[:count]] = True
    return mask


def released_vidkv_keys(packed) -> torch.Tensor:
    """Keys as VidKV's public code restores them: 1-bit codes as +-1, no alpha."""
    unscaled = replace(packed, alpha1=torch.ones_like(packed.alpha1))
    return ops.dequantize_keys(unscaled)


def released_vidkv_values(packed) -> torch.Tensor:
    if packed.mode != "trit":
        return ops.dequantize_values(packed)
    return ops.dequantize_values(replace(packed, scale=torch.ones_like(packed.scale)))


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    groups = q.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(groups, 1)
    v = values.float().repeat_interleave(groups, 1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    return weights @ v


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


def evaluate(config: KVQuantConfig, kv_pairs: list[tuple], released: bool) -> tuple:
    errors = {"keys": [], "values": [], "attention": []}
    for keys, values in kv_pairs:
        salient = salient_mask(values, config.salient_ratio) if config.salient_ratio else None
        packed_k = ops.quantize_keys(keys, config)
        packed_v = ops.quantize_values(values, config, salient=salient)
        if released:
            k_hat, v_hat = released_vidkv_keys(packed_k), released_vidkv_values(packed_v)
        else:
            k_hat, v_hat = ops.dequantize_keys(packed_k), ops.dequantize_values(packed_v)
        g = torch.Generator().manual_seed(1)
        q = torch.randn(1, keys.shape[1] * 4, 16, keys.shape[-1], generator=g)
        errors["keys"].append(relative_error(k_hat, keys))
        errors["values"].append(relative_error(v_hat, values))
        errors["attention"].append(
            relative_error(attention(q, k_hat, v_hat), attention(q, keys, values))
        )
    return tuple(sum(v) / len(v) for v in errors.values())


def has_unscaled_parts(config: KVQuantConfig) -> bool:
    return config.two_bit_key_channels(128) < 128 or config.value_bits == 1.58


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()
    sources = {
        "synthetic outliers": [outlier_kv(args.tokens, seed=s) for s in range(2)],
        "random Qwen2 model": model_kv(args.tokens),
    }
    lines = [
        "# Sub-2-bit KV cache accuracy",
        "",
        f"- **commit**: {commit_label()}",
        f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **tokens**: {args.tokens} per layer; synthetic: 4 KV heads x 128 channels, float16, "
        "heavy-tailed (normal x (1 + |normal| / 2)) with 4 channels per head 10-50x larger "
        "(2 of them in values at 1/4 the factor), 2 seeds; model: random Qwen2 (4 layers, "
        "2 KV heads x 64 channels), every layer",
        "- **metric**: relative L2 error vs float16 (lower is better); attention: float32 "
        "softmax attention of 16 standard-normal queries per head (GQA 4) over the cache",
        "- **VidKV released**: the same codes dequantized without the 1-bit / ternary scale, as "
        "VidKV's public dequantizers do",
        "- **salient 0.2** (synthetic stand-in, no prompt): the tokens with the largest value "
        "norms",
        "",
        "| source | config | keys | values | attention | VidKV released: keys | values | "
        "attention |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for source, pairs in sources.items():
        for name, config in CONFIGS.items():
            ours = evaluate(config, pairs, released=False)
            if has_unscaled_parts(config):
                theirs = [f"{e:.4f}" for e in evaluate(config, pairs, released=True)]
            else:
                theirs = ["same"] * 3
            row = [source, name, *(f"{e:.4f}" for e in ours), *theirs]
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
