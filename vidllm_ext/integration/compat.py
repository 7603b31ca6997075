"""The one place that knows how transformers releases differ; everything else asks here.

Every helper detects a feature (a parameter in a signature, an attribute on a class), never a
version string, so a release that back-ports or renames a feature is handled by what it does.
The tested window is :data:`TESTED_WINDOW`; outside it :func:`warn_if_untested` warns once.

Differences handled here:
- the cache keyword: ``past_key_values`` up to 5.23, ``cache`` from 5.24 (the old name still
  accepted, with a FutureWarning): :func:`cache_parameter`, :func:`cache_from`, :func:`with_cache`,
  :func:`output_cache`;
- the ``Cache`` layer interface: abstract methods added and removed across 5.x
  (``get_max_cache_shape``, ``is_compileable``...): :func:`missing_layer_methods` names what a
  release requires that a layer class lacks.
"""

from __future__ import annotations

import functools
import inspect
import warnings

# The releases CI installs and tests: the floor and the newest at the time of writing.
TESTED_WINDOW = ("5.12.0", "5.25.0")
CACHE_NAMES = ("cache", "past_key_values")


@functools.cache
def _parameters_of(function) -> tuple:
    return tuple(inspect.signature(function).parameters)


def cache_parameter(forward) -> str:
    """The keyword ``forward`` (a decoder, decoder layer or model forward) takes its cache by:
    ``"cache"`` on releases that renamed it, ``"past_key_values"`` before."""
    function = getattr(forward, "__func__", forward)
    return "cache" if "cache" in _parameters_of(function) else "past_key_values"


def cache_from(kwargs: dict):
    """The cache passed in ``kwargs`` under either name (None when absent)."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def pop_cache(kwargs: dict):
    """Removes the cache from ``kwargs`` under both names and returns it (None when absent)."""
    found = None
    for name in CACHE_NAMES:
        value = kwargs.pop(name, None)
        if value is not None:
            found = value
    return found


def with_cache(kwargs: dict, cache, forward) -> dict:
    """``kwargs`` with ``cache`` under the one name ``forward`` takes (the other name removed)."""
    pop_cache(kwargs)
    kwargs[cache_parameter(forward)] = cache
    return kwargs


def output_cache(output):
    """The cache a model output carries, whichever field name the release uses."""
    for name in CACHE_NAMES:
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def missing_layer_methods(layer_class) -> list:
    """Abstract methods of the installed ``CacheLayerMixin`` that ``layer_class`` lacks."""
    return sorted(getattr(layer_class, "__abstractmethods__", ()))


def installed_version() -> str:
    import transformers

    return transformers.__version__


def _release_tuple(version: str) -> tuple:
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def in_tested_window(version: str) -> bool:
    """Whether ``version`` lies in :data:`TESTED_WINDOW` (its major version, newer minors)."""
    release = _release_tuple(version)
    floor, newest = (_release_tuple(v) for v in TESTED_WINDOW)
    return floor <= release and release[:1] == newest[:1]


_warned: set = set()


def warn_if_untested() -> None:
    """Warns once per process when the installed transformers is outside the tested window."""
    version = installed_version()
    if version in _warned or in_tested_window(version):
        return
    _warned.add(version)
    warnings.warn(
        f"vidllm_ext.patch is tested with transformers {TESTED_WINDOW[0]} to {TESTED_WINDOW[1]} "
        f"(and later 5.x releases as they come); transformers {version} is installed, so some "
        "techniques may fail: please report what breaks",
        UserWarning,
        stacklevel=3,
    )


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for ``model(...)`` / ``model.generate(...)`` under the keyword the
    installed transformers takes (``cache`` from 5.24, ``past_key_values`` before), so code that
    passes its own cache runs warning-free on every release of the window.

    Example:
        >>> cache = vidllm_ext.PackedKVCache(cfg)
        >>> out = model.generate(**inputs, **vidllm_ext.cache_kwargs(model, cache))
    """
    return {cache_parameter(model.forward): cache}
