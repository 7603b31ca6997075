"""Layer-skip routing of video tokens inside a patched model (VideoLLM-MoD)."""

from __future__ import annotations


def install_routing(state, model) -> list:
    """Adds a router to every routed decoder layer of ``model`` and routes its forward; returns
    removable handles."""
    raise NotImplementedError("mod=: layer-skip routing (mod=MoDConfig) is not implemented yet")
