"""patch(mod=...) on hybrid (Qwen3.5: Gated DeltaNet + full attention) and sparse-MoE decoders
(issue 18, section 2). The generic routing guarantees run on these families in
test_routing_model.py."""

import math

import pytest
import support.models as models
import torch
from support.gradcheck import gradcheck_in_directions
from support.models import VIDEO, SyntheticVideo, build_model, make_inputs
from support.routed_models import randomize_routers, two_videos
from support.routing_oracle import routed_and_reference
from support.streaming import TIMESTAMP, answer_in_one_call, feed

import vidllm_ext
from vidllm_ext.integration.compat import cache_kwargs, cache_parameter
from vidllm_ext.integration.kv_quant_linear_states import layer_states

pytest.importorskip("transformers")
TOKENS_PER_STEP = 16


def counts_tokens(layer) -> bool:
    """Linear-attention cache layers count their tokens on newer releases only (not on 5.12)."""
    return hasattr(layer, "get_seq_length")


def language_model(model):
    return model.model.language_model


def layer_input(model, inputs, index, **call):
    """The hidden states decoder layer ``index`` received in one forward."""
    captured = {}

    def record(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = language_model(model).layers[index].register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(**inputs, **call)
    handle.remove()
    return captured["hidden"]


def routed_float64_layer(family, index, keep_ratio, video):
    """A float64 tiny model with decoder layer ``index`` routed (random routers; eager experts,
    since grouped_mm has no float64): ``(layer, inputs, hidden, kwargs)``, with the hidden states
    and the position arguments that layer received in one forward of ``video``."""
    model = build_model(family).double()
    if family in models.MOE_FAMILIES:
        model.set_experts_implementation("eager")
    vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=keep_ratio, layers=(index,)))
    randomize_routers(model)
    inputs = make_inputs(family, [video], [5])
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].double()
    layer = language_model(model).layers[index]
    captured = {}

    def record(module, args, kwargs):
        captured.update(kwargs, hidden=args[0] if args else kwargs["hidden_states"])

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    kwargs = {k: captured[k] for k in ("position_embeddings", "position_ids") if k in captured}
    return layer, inputs, captured["hidden"], kwargs


def selected_columns(model, inputs, hidden, index, keep_ratio):
    """Batch of one: the columns routed layer ``index`` selects (every non-video token, and the
    top ceil(keep_ratio * 16) video tokens of each step by router score), ascending."""
    router = language_model(model).layers[index].vidllm_router
    with torch.no_grad():
        scores = router(hidden[0]).squeeze(-1)
    video = (inputs["input_ids"][0] == VIDEO).nonzero().flatten()
    keep = torch.ones(hidden.shape[1], dtype=torch.bool)
    keep[video] = False
    kept = math.ceil(keep_ratio * TOKENS_PER_STEP)
    for step in video.split(TOKENS_PER_STEP):
        keep[step[scores[step].topk(kept).indices]] = True
    return keep.nonzero().flatten()


@pytest.mark.parametrize("family", models.HYBRID_FAMILIES)
def test_a_routed_linear_attention_layer_sees_only_its_selected_tokens(family):
    """Layer 1 (linear attention) routed: its recurrent and convolution states after the prefill
    are those of the raw layer run on the selected tokens alone, in order."""
    from transformers import DynamicCache

    model = build_model(family)
    assert model.config.text_config.layer_types[1] == "linear_attention"
    vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.25, layers=(1,)))
    randomize_routers(model)
    inputs = make_inputs(family, [SyntheticVideo()], [5])
    cache = DynamicCache(config=model.config.text_config)
    hidden = layer_input(model, inputs, 1, **cache_kwargs(model, cache), use_cache=True)
    columns = selected_columns(model, inputs, hidden, 1, 0.25)
    assert columns.numel() == hidden.shape[1] - 4 * (TOKENS_PER_STEP - 4)

    alone = DynamicCache(config=model.config.text_config)
    layer = language_model(model).layers[1]
    with torch.no_grad():
        cache_keyword = {cache_parameter(type(layer).forward): alone}
        type(layer).forward(layer, hidden[:, columns], None, use_cache=True, **cache_keyword)
    routed, expected = cache.layers[1], alone.layers[1]
    if counts_tokens(routed):
        assert int(routed.get_seq_length()) == columns.numel()
    for state, expected_state in zip(layer_states(routed), layer_states(expected), strict=True):
        torch.testing.assert_close(state, expected_state)
    if counts_tokens(cache.layers[0]):
        assert int(cache.layers[0].get_seq_length()) == hidden.shape[1]  # layer 0 saw everything


@pytest.mark.parametrize("family", models.HYBRID_FAMILIES)
def test_decode_steps_route_nothing_in_a_linear_attention_layer(family):
    from transformers import DynamicCache

    model = build_model(family)
    vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
    randomize_routers(model)
    inputs = make_inputs(family, [SyntheticVideo()], [5])
    cache = DynamicCache(config=model.config.text_config)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            **cache_kwargs(model, cache),
        )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    length, skipped = inputs["input_ids"].shape[1], 4 * (TOKENS_PER_STEP - 4)
    # Prefill, then three decode steps of one token each through every layer.
    if counts_tokens(cache.layers[0]):
        assert int(cache.layers[0].get_seq_length()) == length + 3
        assert int(cache.layers[1].get_seq_length()) == length - skipped + 3  # routed, linear
    assert cache.layers[3].keys.shape[-2] == length - skipped + 3  # routed, full attention


@pytest.mark.parametrize("family", models.MOE_FAMILIES)
def test_unselected_and_padding_tokens_never_reach_the_experts(family):
    """A padded batch: a routed MoE layer's router sees exactly the selected real tokens; an
    unrouted one every token; the stats count the assignments skipped."""
    model = build_model(family)
    text_config = model.config.text_config
    vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
    randomize_routers(model)
    videos, prompts = two_videos(family)
    inputs = make_inputs(family, videos, prompts)
    seen = {}
    handles = [
        layer.mlp.gate.register_forward_pre_hook(
            lambda module, args, index=index: seen.__setitem__(index, args[0].shape[0])
        )
        for index, layer in enumerate(language_model(model).layers)
    ]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    stats = vidllm_ext.last_stats(model, "mod")
    real = int(inputs["attention_mask"].sum())
    video = sum(v.steps for v in videos) * TOKENS_PER_STEP
    selected_video = sum(v.steps for v in videos) * 4
    batch_tokens = inputs["input_ids"].numel()
    for index in range(text_config.num_hidden_layers):
        expected = real - video + selected_video if index in stats.routed_layers else batch_tokens
        assert seen[index] == expected, index
    top_k = text_config.num_experts_per_tok
    skipped = len(stats.routed_layers) * (video - selected_video) * top_k
    assert stats.expert_assignments_skipped == skipped > 0


def test_a_dense_decoder_skips_no_expert_assignments():
    model = vidllm_ext.patch(build_model("qwen3_5"), mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
    with torch.no_grad():
        model(**make_inputs("qwen3_5", [SyntheticVideo()], [5]))
    stats = vidllm_ext.last_stats(model, "mod")
    assert stats.expert_assignments_skipped == 0
    # Only layer 3 of the routed (1, 3) holds KV: 48 skipped tokens x 2 x 2 heads x 16 x 4 bytes.
    assert stats.kv_cache_bytes_saved == 4 * 12 * 2 * 2 * 16 * 4


def test_the_first_full_attention_layer_is_routed_only_with_every_full_attention_layer(
    monkeypatch,
):
    monkeypatch.setitem(models.TEXT, "num_hidden_layers", 8)
    model = build_model("qwen3_5")  # linear x3, full, linear x3, full
    with pytest.raises(ValueError, match=r"layer 3 is the first full-attention .*unrouted: \[7\]"):
        vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(layers=(1, 3)))
    assert not hasattr(model, "_vidllm_patch")
    for layers in ((3, 7), (1, 2, 7), "interleaved"):
        vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.5, layers=layers))
    inputs = make_inputs("qwen3_5", [SyntheticVideo()], [5])
    with torch.no_grad():  # interleaved: 1, 3, 5, 7, every full-attention layer among them
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family, index", [("qwen3_5", 1), ("qwen3_5_moe", 1), ("qwen3_5", 3)])
def test_routed_hybrid_layer_matches_the_reference_in_forward_and_gradients(family, index):
    """Batch of one in float64: the routed layer against reference.routing.routed_update with a
    layer_fn that runs the raw layer on the selected tokens (without a cache)."""
    layer, inputs, hidden, kwargs = routed_float64_layer(family, index, 0.25, SyntheticVideo())
    cos, sin = kwargs["position_embeddings"]
    is_video = inputs["input_ids"][0] == VIDEO
    offsets = torch.arange(0, 4 * 16 + 1, 16)

    def raw_layer(selected, selected_index):
        embeddings = (cos[:, selected_index], sin[:, selected_index])
        return type(layer).forward(layer, selected[None], embeddings)[0]

    results = routed_and_reference(layer, hidden, kwargs, is_video, offsets, 0.25, raw_layer)
    (out, grad_hidden, grad_router), (expected, expected_hidden, expected_router) = results
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad_hidden, expected_hidden, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad_router, expected_router, atol=1e-10, rtol=1e-10)
    unchanged = (out == hidden[0]).all(-1)
    assert int(unchanged.sum()) == 4 * 12 and not unchanged[~is_video].any()


@pytest.mark.parametrize("family", models.HYBRID_FAMILIES)
def test_streaming_chunks_route_like_one_forward(family):
    """A routed linear-attention layer continues its state chunk by chunk with the selected tokens
    only: the stream answers what one prefill of the whole video answers."""
    model = build_model(family)
    video = SyntheticVideo(steps=6, moving=(0, 5, 6, 11))
    vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
    randomize_routers(model)
    expected = answer_in_one_call(model, family, video)
    session = vidllm_ext.StreamingSession(model, dtd=None, timestamp_ids=lambda step: TIMESTAMP)
    feed(session, video, [2, 1, 3])
    answer = session.ask([50, 51, 52], max_new_tokens=6)
    assert torch.equal(answer, expected[: answer.numel()])
    layers = session.cache.layers
    skipped = 6 * (TOKENS_PER_STEP - 4)
    if counts_tokens(layers[0]):
        assert int(layers[0].get_seq_length()) - int(layers[1].get_seq_length()) == skipped
        assert layers[0].get_seq_length() - layers[3].keys.shape[-2] == skipped


@pytest.mark.parametrize(
    "family, index", [("qwen3_5", 1), ("qwen3_5", 3), ("qwen3_5_moe", 1), ("qwen3_vl_moe", 1)]
)
def test_gradcheck_of_a_routed_hybrid_or_moe_layer(family, index):
    """torch.autograd.gradcheck of a routed linear-attention, full-attention or MoE layer in its
    hidden states and router weight. These layers compute parts in float32 whatever the input
    dtype (the gated RMSNorm, the delta rule, the softmax): the finite differences take a step of
    1e-3, whose error (about 1e-6 here) is far below a wrong gradient's."""
    layer, _, hidden, kwargs = routed_float64_layer(family, index, 0.5, SyntheticVideo(steps=2))
    weight = layer.vidllm_router.weight.detach().clone()

    def routed(hidden, weight):
        parameters = {"vidllm_router.weight": weight}
        return torch.func.functional_call(layer, parameters, (hidden,), kwargs)[0]

    # Repeated video tokens enter with equal router scores, a tie the finite differences would
    # break (a jump, not a wrong gradient): gradcheck at a generic point near the real input.
    noise = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    hidden = hidden + 1e-2 * noise.double()
    assert gradcheck_in_directions(routed, (hidden, weight), eps=1e-3, atol=2e-5, rtol=1e-3)
