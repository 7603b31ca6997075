"""Every benchmark family, by technique name, in the order ``vidllm-ext bench`` runs them."""

from __future__ import annotations

from vidllm_ext.bench import frame_drop, kv_attention, kv_quant, routing, token_merge
from vidllm_ext.bench.harness import Family

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        frame_drop.FAMILY,
        token_merge.FAMILY,
        routing.FAMILY,
        kv_quant.FAMILY,
        kv_attention.FAMILY,
    )
}
