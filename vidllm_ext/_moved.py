"""The import paths of modules that moved when the package was reorganized (issue 16) keep working.

``import vidllm_ext.kv_config`` (or ``from vidllm_ext.streaming import StreamingSession``) finds the
module that holds those names now; an old path whose names now live in several modules gets a
module that carries them all. Nothing inside the package imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

# old module -> the module(s) holding its public names now
MOVED: dict[str, tuple[str, ...]] = {
    "vidllm_ext.results": ("vidllm_ext.contracts.frame_drop",),
    "vidllm_ext.merge_types": ("vidllm_ext.contracts.token_merge",),
    # merge_schedule itself is computed in C++ now; the oracle keeps its own statement of it.
    "vidllm_ext.merge_schedule": (
        "vidllm_ext.contracts.token_merge",
        "vidllm_ext.reference.token_merge",
    ),
    "vidllm_ext.kv_config": ("vidllm_ext.contracts.kv_quant",),
    "vidllm_ext.kv_types": ("vidllm_ext.contracts.kv_quant",),
    "vidllm_ext.kv_cache": ("vidllm_ext.integration.kv_quant_cache",),
    "vidllm_ext.kv_linear": ("vidllm_ext.integration.kv_quant_linear_states",),
    "vidllm_ext.streaming": ("vidllm_ext.integration.streaming",),
    "vidllm_ext.dtd_stream": ("vidllm_ext.integration.frame_drop_stream",),
    "vidllm_ext.demo_task": ("vidllm_ext.demo.task",),
    "vidllm_ext.demo_processor": ("vidllm_ext.demo.processor",),
    "vidllm_ext.demo_model": ("vidllm_ext.demo.model",),
    "vidllm_ext.demo_augment": ("vidllm_ext.demo.augment",),
    "vidllm_ext.demo_eval": ("vidllm_ext.demo.eval",),
    "vidllm_ext.demo_strip": ("vidllm_ext.demo.strip",),
    "vidllm_ext.train_demo": ("vidllm_ext.demo.train",),
    "vidllm_ext.ops.dtd": ("vidllm_ext.ops.frame_drop",),
    "vidllm_ext.ops.merge": ("vidllm_ext.ops.token_merge",),
    "vidllm_ext.ops.kv": ("vidllm_ext.ops.kv_quant",),
    "vidllm_ext.ops.kv_pack": ("vidllm_ext.ops.kv_quant_pack",),
    "vidllm_ext.reference.dtd": ("vidllm_ext.reference.frame_drop",),
    "vidllm_ext.reference.merge": ("vidllm_ext.reference.token_merge",),
    "vidllm_ext.reference.kv": ("vidllm_ext.reference.kv_quant",),
    "vidllm_ext.reference.kv_pack": ("vidllm_ext.reference.kv_quant_pack",),
    "vidllm_ext.integration.config": (
        "vidllm_ext.contracts.frame_drop",
        "vidllm_ext.contracts.token_merge",
        "vidllm_ext.contracts.routing",
    ),
    "vidllm_ext.integration.token_drop": ("vidllm_ext.integration.frame_drop",),
    "vidllm_ext.integration.routed_layers": ("vidllm_ext.integration.routing_layers",),
    "vidllm_ext.integration.kv": ("vidllm_ext.integration.kv_quant",),
    "vidllm_ext.integration.attention": ("vidllm_ext.integration.kv_attention",),
    "vidllm_ext.bench.dtd": ("vidllm_ext.bench.frame_drop",),
}
# vidllm_ext.ops.packed_attention and vidllm_ext.reference.packed_attention, the former modules of
# kv_attention, are not listed: those names are the packed_attention functions, and importing an
# alias module would replace the function on its package.


def _combined(name: str, homes: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name, f"Moved: the names of {name} now live in {', '.join(homes)}.")
    for home in homes:
        source = importlib.import_module(home)
        for key, value in vars(source).items():
            if not key.startswith("_"):
                setattr(module, key, value)
    return module


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path to the module that holds its names now (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        homes = MOVED[module.__name__]
        new = importlib.import_module(homes[0]) if len(homes) == 1 else None
        # The import system returns whatever sys.modules holds after exec_module.
        sys.modules[module.__name__] = new or _combined(module.__name__, homes)

    def get_code(self, fullname):  # `python -m <old path>` runs the module's new home
        spec = importlib.util.find_spec(MOVED[fullname][0])
        return spec.loader.get_code(spec.name)


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
