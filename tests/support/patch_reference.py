"""By-hand references for the model tests: what the language model receives unpatched, the inputs
DTD and token merging should leave it (from the reference ops), and greedy decoding from reduced
inputs."""

import torch

from support.models import FEATURE_THRESHOLD, video_layout
from vidllm_ext import reference
from vidllm_ext.integration.compat import cache_kwargs
from vidllm_ext.reference.token_merge import chunk_mean_metric, merge_schedule


def language_model_inputs(model, inputs):
    """What the unpatched language model receives for these inputs."""
    captured = {}
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return captured


def reduce_inputs(captured: dict, keep: torch.Tensor, embeds: torch.Tensor | None = None):
    """The language model's inputs (batch of one) restricted to the columns where bool ``keep
    [length]`` is set, with their original position ids; ``embeds`` replaces the captured input
    embeddings (merged features written at their representatives). Returns (inputs, positions
    of the full sequence)."""
    embeds = captured["inputs_embeds"] if embeds is None else embeds
    positions = captured["position_ids"]
    if positions is None:  # LLaVA-OneVision: the language model numbers tokens itself
        positions = torch.arange(embeds.shape[1])[None]
    reduced = dict(
        inputs_embeds=embeds[:, keep],
        position_ids=positions[..., keep],
        attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long),
    )
    if captured.get("visual_pos_masks") is not None:  # Qwen3-VL deepstack
        visual = captured["visual_pos_masks"]
        reduced["visual_pos_masks"] = visual[:, keep]
        kept_rows = keep[None].expand_as(visual)[visual]
        reduced["deepstack_visual_embeds"] = [
            e[kept_rows] for e in captured["deepstack_visual_embeds"]
        ]
    return reduced, positions


def reference_greedy(model, reduced, positions, new_tokens):
    """Greedy decoding by hand: the reduced prefill, then one token at a time at the positions
    an undropped prompt would give it; like generate, it stops after the end-of-sequence id."""
    from transformers import DynamicCache

    language_model = model.model.language_model
    cache = DynamicCache(config=model.config.text_config)
    with torch.no_grad():
        hidden = language_model(
            **reduced, **cache_kwargs(language_model, cache), use_cache=True
        ).last_hidden_state
        position = positions[..., -1:].clone()
        mask = reduced["attention_mask"]
        tokens = []
        for _ in range(new_tokens):
            token = model.lm_head(hidden[:, -1]).argmax(-1)
            tokens.append(token)
            if int(token) == model.generation_config.eos_token_id:
                break
            position = position + 1
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            hidden = language_model(
                inputs_embeds=language_model.embed_tokens(token)[:, None],
                position_ids=position,
                attention_mask=mask,
                **cache_kwargs(language_model, cache),
                use_cache=True,
            ).last_hidden_state
    return torch.stack(tokens, dim=1)


def dtd_reference_keep(family, embeds, columns, steps, tokens):
    """DTD's keep decision (the reference op at the family's feature threshold) on the video
    columns of the input embeddings ``embeds`` [1, length, dim]: bool [steps * tokens]."""
    frames = embeds[0, columns].reshape(steps, tokens, -1)
    return reference.dtd_keep_mask(frames, FEATURE_THRESHOLD[family]).flatten()


def dtd_reduced_inputs(family, model, inputs):
    """The spec: DTD's keep decision on each video's input embeddings (reference ops), then the
    language model's inputs restricted to the kept columns, original position ids included.
    Batch of one."""
    captured = language_model_inputs(model, inputs)
    embeds = captured["inputs_embeds"]
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    columns, steps, tokens = video_layout(family, inputs)
    keep[columns] = dtd_reference_keep(family, embeds, columns, steps, tokens)
    return reduce_inputs(captured, keep)


def merged_reference_inputs(family, model, inputs, config, dtd=False):
    """The spec, segment by segment with the reference ops (batch of one): DTD's keep decision
    (when on), then each segment's surviving tokens merged by rounds of bipartite soft matching
    down to tokens_per_segment; merged features at their representatives' columns, which keep
    their position ids. Returns (language model inputs, full positions, kept columns)."""
    captured = language_model_inputs(model, inputs)
    embeds = captured["inputs_embeds"].clone()
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    columns, steps, tokens = video_layout(family, inputs)
    present = torch.ones(steps * tokens, dtype=torch.bool)
    if dtd:
        present = dtd_reference_keep(family, embeds, columns, steps, tokens)
    keep[columns] = False
    span = config.frames_per_segment * tokens
    for start in range(0, columns.numel(), span):
        segment = columns[start : start + span][present[start : start + span]]
        x, size, kept = embeds[:, segment], None, torch.arange(segment.numel())
        for r in merge_schedule(segment.numel(), config.tokens_per_segment):
            metric = chunk_mean_metric(x, config.metric_chunks)
            plan = reference.bipartite_soft_matching(metric, r)
            x, size = reference.merge_wavg(plan, x, size)
            kept = kept[plan.kept_index[0]]
        keep[segment[kept]] = True
        embeds[0, segment[kept]] = x[0]
    reduced, positions = reduce_inputs(captured, keep, embeds)
    return reduced, positions, keep.nonzero().flatten()
