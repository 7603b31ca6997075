"""The one place that knows how transformers releases differ; everything else asks here.

Every helper detects a feature (a parameter in a signature, an attribute on a class), never a
version string.

(Issue 18's subset, identical to the functions of the same names the lead is adding on main for
issue 13: on merge, main's module wins.)
"""

from __future__ import annotations

import functools
import inspect

CACHE_NAMES = ("cache", "past_key_values")


@functools.cache
def _parameters_of(function) -> tuple:
    return tuple(inspect.signature(function).parameters)


def cache_parameter(forward) -> str:
    """The keyword ``forward`` (a decoder, decoder layer or model forward) takes its cache by:
    ``"cache"`` on releases that renamed it, ``"past_key_values"`` before."""
    function = getattr(forward, "__func__", forward)
    return "cache" if "cache" in _parameters_of(function) else "past_key_values"


def pop_cache(kwargs: dict):
    """Removes the cache from ``kwargs`` under both names and returns it (None when absent)."""
    found = None
    for name in CACHE_NAMES:
        value = kwargs.pop(name, None)
        if value is not None:
            found = value
    return found
