"""patch(mod=MoDConfig): routed decoder layers on tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL and
LLaVA-OneVision models (issue 7, sections 2-4)."""

import math

import pytest
import support.models as models
import torch
from conftest import on_cuda
from support.gradcheck import gradcheck_in_directions
from support.models import FAMILIES, VIDEO, SyntheticVideo, build_model, make_inputs
from support.routed_models import ROUTER, randomize_routers, two_videos
from support.routing_oracle import routed_and_reference
from support.streaming import TIMESTAMP, answer_in_one_call, feed

import vidllm_ext
from vidllm_ext.integration.compat import cache_kwargs, output_cache, pop_cache
from vidllm_ext.integration.routing_context import RoutingContext

pytest.importorskip("transformers")
TOKENS_PER_STEP = 16  # SyntheticVideo's default grid in every family


def language_model(model):
    return model.model.language_model


def router_keys(model):
    return sorted(key for key in model.state_dict() if ROUTER in key)


def cache_lengths(cache):
    return [layer.keys.shape[-2] for layer in cache.layers]


def kept_per_step(keep_ratio, tokens=TOKENS_PER_STEP):
    return min(tokens, math.ceil(keep_ratio * tokens))


def every_family_and_attention(test):
    """Parametrizes ``test(family, attn_implementation)``: every family, sdpa and eager."""
    test = pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])(test)
    return pytest.mark.parametrize("family", FAMILIES)(test)


def model_and_batch(family, attn_implementation):
    """A tiny ``family`` model and the left-padded two-video batch: (model, videos, prompt
    lengths, inputs)."""
    model = build_model(family, attn_implementation)
    videos, prompts = two_videos(family)
    return model, videos, prompts, make_inputs(family, videos, prompts)


@every_family_and_attention
def test_keep_everything_without_gate_equals_the_unpatched_model(family, attn_implementation):
    model, videos, _, inputs = model_and_batch(family, attn_implementation)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**inputs).logits
        vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=1.0, gate="none"))
        randomize_routers(model)  # scores decide nothing when every token is kept
        actual = model(**inputs).logits
    assert torch.allclose(actual[real], expected[real], atol=1e-5, rtol=1e-5)
    stats = vidllm_ext.last_stats(model, "mod")
    video = sum(v.steps for v in videos) * TOKENS_PER_STEP
    routed = len(stats.routed_layers)  # 1 of 2 layers; 1 and 3 of the 4-layer hybrid stacks
    assert stats.video_tokens_before == video and stats.video_tokens_after == [video] * routed
    assert stats.kv_cache_bytes_saved == 0


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_routers_are_saved_loaded_and_trained_with_the_model(family):
    config = vidllm_ext.MoDConfig(keep_ratio=0.25)
    model = vidllm_ext.patch(build_model(family), mod=config)
    assert router_keys(model) == [
        "model.language_model.layers.1.vidllm_router.bias",
        "model.language_model.layers.1.vidllm_router.weight",
    ]
    router = language_model(model).layers[1].vidllm_router
    assert router.weight.requires_grad and router.bias.requires_grad
    assert not router.weight.any()  # zero-initialized: gate sigmoid2 gives g = 1
    randomize_routers(model, seed=3)
    inputs = make_inputs(family, *two_videos(family))
    with torch.no_grad():
        expected = model(**inputs).logits

    fresh = vidllm_ext.patch(build_model(family, seed=1), mod=config)
    with torch.no_grad():
        assert not torch.allclose(fresh(**inputs).logits, expected)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, expected)

    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert router.bias.grad is not None and router.bias.grad.abs() > 0


@every_family_and_attention
def test_padded_batch_generates_what_each_sample_generates_alone(family, attn_implementation):
    model, videos, prompts, inputs = model_and_batch(family, attn_implementation)
    with torch.no_grad():
        unrouted = model(**inputs).logits[:, -1]
    vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
    randomize_routers(model)
    with torch.no_grad():
        routed = model(**inputs).logits[:, -1]
        batch = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        for row, video, prompt in zip(range(2), videos, prompts):
            single_inputs = make_inputs(family, [video], [prompt])
            single = model(**single_inputs).logits[:, -1]
            assert torch.allclose(single[0], routed[row], atol=1e-5, rtol=1e-4)
            generated = model.generate(**single_inputs, max_new_tokens=6, do_sample=False)
            new = generated[0, single_inputs["input_ids"].shape[1] :]  # may stop early at EOS
            start = inputs["input_ids"].shape[1]
            assert torch.equal(batch[row, start : start + new.numel()], new)
    assert not torch.allclose(routed, unrouted, atol=1e-3)  # routing took effect


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_routed_layer_cache_holds_text_and_selected_video_only(family):
    keep_ratio = 0.25
    model = vidllm_ext.patch(build_model(family), mod=vidllm_ext.MoDConfig(keep_ratio=keep_ratio))
    randomize_routers(model)
    videos, prompts = two_videos(family)
    inputs = make_inputs(family, videos, prompts)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True
        )
    cache = output_cache(out)
    skipped = [v.steps * (TOKENS_PER_STEP - kept_per_step(keep_ratio)) for v in videos]
    # Rows are left-padded to the row that keeps the most tokens.
    assert cache_lengths(cache) == [length + 3, length - min(skipped) + 3]
    layer_zero, routed = cache.layers
    assert layer_zero.keys.shape[:2] == routed.keys.shape[:2] == (2, 2)


def test_routing_stats_and_caches_of_several_routed_layers(monkeypatch):
    monkeypatch.setitem(models.TEXT, "num_hidden_layers", 5)
    from transformers import DynamicCache

    model = build_model("qwen2_vl")
    videos, prompts = two_videos("qwen2_vl")
    inputs = make_inputs("qwen2_vl", videos, prompts)
    length = inputs["input_ids"].shape[1]
    for layers, routed in (("interleaved", (1, 3)), ((2, 3, 4), (2, 3, 4))):
        vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.3, layers=layers))
        randomize_routers(model)
        cache = DynamicCache(config=model.config.text_config)
        with torch.no_grad():
            model(**inputs, **cache_kwargs(model, cache), use_cache=True)
        stats = vidllm_ext.last_stats(model, "mod")
        assert isinstance(stats, vidllm_ext.RoutingStats)
        assert stats.routed_layers == routed
        assert stats.video_tokens_before == 6 * 16
        assert stats.video_tokens_after == [6 * 5] * len(routed)  # ceil(0.3 * 16) = 5 a step
        kv_bytes = 2 * 2 * 16 * 4  # keys and values, 2 kv heads, head_dim 16, float32
        assert stats.kv_cache_bytes_saved == len(routed) * (96 - 30) * kv_bytes
        skipped = min(v.steps for v in videos) * 11
        expected = [length - skipped if i in routed else length for i in range(5)]
        assert cache_lengths(cache) == expected
        with torch.no_grad():  # a decode step routes nothing and keeps the prefill's stats
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert vidllm_ext.last_stats(model, "mod").video_tokens_after == [30] * len(routed)


def test_unpatch_restores_the_exact_model():
    model = build_model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", *two_videos("qwen2_5_vl"))
    keys = sorted(model.state_dict())
    with torch.no_grad():
        expected = model(**inputs).logits
        hooks = [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in model.modules()]
        vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
        randomize_routers(model)
        assert not torch.allclose(model(**inputs).logits, expected)
        vidllm_ext.unpatch(model)
        assert torch.equal(model(**inputs).logits, expected)
    assert sorted(model.state_dict()) == keys
    assert hooks == [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in model.modules()]
    assert all("forward" not in vars(layer) for layer in language_model(model).layers)


def captured_layer_inputs(model, inputs, index):
    """(hidden_states, keyword arguments) decoder layer ``index`` received in a forward."""
    captured = {}

    def record(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

    layer = language_model(model).layers[index]
    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return captured["hidden"], captured["kwargs"]


def test_routed_layer_matches_the_reference_in_forward_and_gradients():
    """Batch of one in float64: the routed layer against reference.routing.routed_update with a
    layer_fn that calls the raw layer on the selected tokens (causal, their own rotary angles)."""
    model = vidllm_ext.patch(
        build_model("qwen2_vl").double(), mod=vidllm_ext.MoDConfig(keep_ratio=0.25)
    )
    randomize_routers(model)
    inputs = make_inputs("qwen2_vl", [SyntheticVideo()], [5])
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].double()
    layer = language_model(model).layers[1]
    hidden, kwargs = captured_layer_inputs(model, inputs, 1)
    pop_cache(kwargs)
    kwargs.update(use_cache=False)  # the forward above filled a cache
    cos, sin = kwargs["position_embeddings"]
    is_video = inputs["input_ids"][0] == VIDEO
    offsets = torch.arange(0, 4 * 16 + 1, 16)

    def raw_layer(selected, selected_index):
        embeddings = (cos[..., selected_index, :], sin[..., selected_index, :])  # token axis -2
        return type(layer).forward(layer, selected[None], position_embeddings=embeddings)[0]

    results = routed_and_reference(layer, hidden, kwargs, is_video, offsets, 0.25, raw_layer)
    (out, grad_hidden, grad_router), (expected, expected_hidden, expected_router) = results
    assert torch.allclose(out, expected, atol=1e-10, rtol=1e-10)
    assert torch.allclose(grad_hidden, expected_hidden, atol=1e-10, rtol=1e-10)
    assert torch.allclose(grad_router, expected_router, atol=1e-10, rtol=1e-10)
    unchanged = (out == hidden[0]).all(-1)
    assert int(unchanged.sum()) == 4 * 12 and not unchanged[~is_video].any()


def test_gradcheck_of_a_routed_layer():
    model = vidllm_ext.patch(
        build_model("qwen2_vl").double(), mod=vidllm_ext.MoDConfig(keep_ratio=0.5)
    )
    layer = language_model(model).layers[1]
    for name in ("input_layernorm", "post_attention_layernorm"):  # they compute in float32
        norm = torch.nn.RMSNorm(64, eps=1e-6, dtype=torch.float64)
        setattr(layer, name, norm)
    # Text, two steps of three video tokens (two of each pass through), text.
    frame_ids = torch.tensor([[-1, 0, 0, 0, 1, 1, 1, -1]])
    layer.forward.__self__.runtime.context = RoutingContext.build(
        frame_ids, torch.ones(1, 8, dtype=torch.bool)
    )
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 8, 64, dtype=torch.float64, generator=generator)
    weight = torch.randn(1, 64, dtype=torch.float64, generator=generator)
    positions = torch.arange(8).view(1, 1, 8).expand(3, 1, 8)
    embeddings = language_model(model).rotary_emb(hidden, positions)

    def routed(hidden, weight):
        parameters = {"vidllm_router.weight": weight}
        return torch.func.functional_call(
            layer, parameters, (hidden,), {"position_embeddings": embeddings}
        )

    assert gradcheck_in_directions(routed, (hidden, weight))


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_dtd_and_routing_in_one_generate(family):
    threshold = models.FEATURE_THRESHOLD[family]
    model = vidllm_ext.patch(
        build_model(family),
        dtd=vidllm_ext.DTDConfig(threshold=threshold),
        mod=vidllm_ext.MoDConfig(keep_ratio=0.5),
    )
    randomize_routers(model)
    videos, prompts = two_videos(family)
    inputs = make_inputs(family, videos, prompts)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True
        )
        dtd, mod = vidllm_ext.last_stats(model), vidllm_ext.last_stats(model, "mod")
        assert dtd.video_tokens_after < dtd.video_tokens_before
        assert mod.video_tokens_before == dtd.video_tokens_after
        kept = [
            sum(math.ceil(0.5 * round((1 - r) * 16)) for r in ratios.tolist())
            for ratios in dtd.step_drop_ratios
        ]
        assert mod.video_tokens_after == [sum(kept)]
        layer_zero, routed = cache_lengths(output_cache(out))
        # Layer 0: per row the real tokens DTD kept, padded to the longest row. A routed layer
        # always selects padding (it is never routed), so each row keeps layer 0's length less
        # the video tokens routing skipped in that row, and the batch is padded to the longest.
        dtd_kept = [round(float((16 * (1 - ratios)).sum())) for ratios in dtd.step_drop_ratios]
        rows_layer_zero = [
            int(inputs["attention_mask"][b].sum()) - 16 * v.steps + dtd_kept[b] + 3
            for b, v in enumerate(videos)
        ]
        assert layer_zero == max(rows_layer_zero)
        skipped = [dtd_kept[b] - kept[b] for b in range(2)]
        assert routed == layer_zero - min(skipped)
        for row, video, prompt in zip(range(2), videos, prompts):
            single = model.generate(
                **make_inputs(family, [video], [prompt]), max_new_tokens=4, do_sample=False
            )
            assert torch.equal(out.sequences[row, -4:], single[0, -4:])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_streaming_chunks_route_like_one_forward(family):
    """A stream fed in chunks (cut at step boundaries) keeps the same tokens in every step as one
    prefill of the whole video, so it answers the same."""
    model = build_model(family)
    video = SyntheticVideo(steps=6, moving=(0, 5, 6, 11))
    config = vidllm_ext.MoDConfig(keep_ratio=0.25)
    vidllm_ext.patch(model, mod=config)
    randomize_routers(model)
    routers = {k: v.clone() for k, v in model.state_dict().items() if ROUTER in k}
    expected = answer_in_one_call(model, family, video)
    parameters = {id(p) for name, p in model.named_parameters() if ROUTER in name}
    # The session patches again (dtd, merge, kv) and keeps the routed layers with their routers.
    session = vidllm_ext.StreamingSession(model, dtd=None, timestamp_ids=lambda step: TIMESTAMP)
    assert {id(p) for name, p in model.named_parameters() if ROUTER in name} == parameters
    assert all(torch.equal(model.state_dict()[k], v) for k, v in routers.items())
    feed(session, video, [2, 1, 3])
    answer = session.ask([50, 51, 52], max_new_tokens=6)
    assert torch.equal(answer, expected[: answer.numel()])
    layer_zero, routed = cache_lengths(session.cache)
    assert layer_zero - routed == 6 * (16 - 4)


@pytest.mark.parametrize(
    "config, kwargs, error, message",
    [
        (vidllm_ext.MoDConfig(layers=(1, 2)), {}, ValueError, "layer 2 is out of range"),
        (vidllm_ext.MoDConfig(layers=(0, 1)), {}, ValueError, "layer 0 cannot be routed"),
        (vidllm_ext.MoDConfig(), {"kv": vidllm_ext.KVQuantConfig()}, NotImplementedError, "kv="),
        (vidllm_ext.MoDConfig(), {"flash": True}, NotImplementedError, "flash_attention_2"),
    ],
    ids=["out-of-range", "layer-0", "kv", "flash"],
)
def test_rejected_configurations_leave_the_model_unpatched(config, kwargs, error, message):
    model = build_model("qwen2_vl")
    inputs = make_inputs("qwen2_vl", [SyntheticVideo()], [5])
    with torch.no_grad():
        expected = model(**inputs).logits
    text_config = model.config.text_config
    if kwargs.pop("flash", False):
        text_config._attn_implementation = "flash_attention_2"
    with pytest.raises(error, match=message):
        vidllm_ext.patch(model, mod=config, **kwargs)
    text_config._attn_implementation = "sdpa"
    assert not hasattr(model, "_vidllm_patch") and not router_keys(model)
    assert "get_video_features" not in vars(model.model)
    assert not language_model(model)._forward_pre_hooks and not model.model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)


def test_a_cache_changed_outside_the_routed_layers_is_an_error():
    """Beam search reorders the cache rows between steps; the routed layers' record of which
    entries are padding would no longer match, so they refuse instead of answering wrong."""
    model = vidllm_ext.patch(build_model("qwen2_vl"), mod=vidllm_ext.MoDConfig(keep_ratio=0.25))
    inputs = make_inputs("qwen2_vl", [SyntheticVideo()], [5])
    with torch.no_grad(), pytest.raises(RuntimeError, match="beam search"):
        model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)


@pytest.mark.cuda
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_routing_on_cuda_matches_the_cpu(attn_implementation, monkeypatch):
    """The same patched model on CUDA (routing kernels on the GPU or the emulator): the CPU's
    logits, and a padded batch generating what each sample generates alone."""
    if torch.cuda.is_available():  # a real GPU (the emulator runs on host tensors)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the vision tower's conv
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    config = vidllm_ext.MoDConfig(keep_ratio=0.25)
    cpu = vidllm_ext.patch(build_model("qwen2_vl", attn_implementation), mod=config)
    randomize_routers(cpu)
    videos, prompts = two_videos("qwen2_vl")
    inputs = make_inputs("qwen2_vl", videos, prompts)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = cpu(**inputs).logits
    with on_cuda() as device, torch.no_grad():
        gpu = vidllm_ext.patch(build_model("qwen2_vl", attn_implementation).to(device), mod=config)
        randomize_routers(gpu)
        assert gpu.model.language_model.layers[1].vidllm_router.weight.device.type == device
        on_gpu = {name: value.to(device) for name, value in inputs.items()}
        actual = gpu(**on_gpu).logits.cpu()
        assert torch.allclose(actual[real], expected[real], atol=1e-4, rtol=1e-4)
        assert vidllm_ext.last_stats(gpu, "mod") == vidllm_ext.last_stats(cpu, "mod")
        batch = gpu.generate(**on_gpu, max_new_tokens=6, do_sample=False)
        for row, video, prompt in zip(range(2), videos, prompts):
            single = make_inputs("qwen2_vl", [video], [prompt])
            single = {k: v.to(device) for k, v in single.items()}
            generated = gpu.generate(**single, max_new_tokens=6, do_sample=False)
            assert torch.equal(batch[row, -6:], generated[0, -6:])
