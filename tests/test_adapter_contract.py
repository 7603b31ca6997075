"""Every registered family's adapter provides the declared adapter contract
(vidllm_ext/integration/adapters/protocols.py): what patching needs, and what streaming adds."""

import pytest
from support.models import build_model

from vidllm_ext.integration.adapters import protocols
from vidllm_ext.integration.registry import FAMILIES, adapter_for, family_available


def contract_members(protocol) -> set[str]:
    """The methods and attributes a Protocol declares (its own and its bases')."""
    members = set()
    for cls in protocol.__mro__:
        if cls in (protocols.Protocol, object) or not issubclass(cls, protocols.Protocol):
            continue
        members |= {name for name in vars(cls) if not name.startswith("_")}
        members |= set(getattr(cls, "__annotations__", {}))
    return members


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_registered_adapters_provide_the_contract(model_type):
    if not family_available(model_type):
        pytest.skip(f"transformers has no {model_type}")
    adapter = adapter_for(build_model(model_type))
    assert isinstance(adapter, protocols.PatchAdapter)
    assert adapter.supports_streaming == isinstance(adapter, protocols.StreamingAdapter)
    missing = {
        name for name in contract_members(protocols.StreamingAdapter) if not hasattr(adapter, name)
    }
    assert not missing, missing


def test_an_adapter_missing_a_method_fails_the_contract():
    class Incomplete:
        multimodal = language_model = None
        video_token_id, vision_token_ids, supports_streaming = 0, (0,), False

        def capture(self, args, kwargs):
            return {}

    assert not isinstance(Incomplete(), protocols.PatchAdapter)
    assert {"video_segments", "compact_side_inputs"} <= contract_members(protocols.PatchAdapter)
