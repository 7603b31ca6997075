"""Every benchmark family, by technique name, in the order ``vidllm-ext bench`` runs them.

A family is one module of this package, named after its technique, that defines ``TITLE``,
``COLUMNS`` (its descriptive columns), ``cases`` and ``targets``, and optionally ``facts`` (see
:class:`~vidllm_ext.bench.harness.Family`); its shapes are :mod:`vidllm_ext.bench.shapes`'s
entries under the same name.
"""

from __future__ import annotations

from types import ModuleType

from vidllm_ext.bench import frame_drop, kv_attention, kv_quant, routing, shapes, token_merge
from vidllm_ext.bench.harness import Family, shape_facts


def family_of(module: ModuleType) -> Family:
    """The :class:`Family` that ``module`` (a family module, above) defines."""
    name = module.__name__.rpartition(".")[2]
    return Family(
        name=name,
        title=module.TITLE,
        shapes=shapes.SHAPES[name],
        default_shapes=shapes.DEFAULT_SHAPES[name],
        columns=module.COLUMNS,
        cases=module.cases,
        targets=module.targets,
        facts=getattr(module, "facts", shape_facts),
    )


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in map(family_of, (frame_drop, token_merge, routing, kv_quant, kv_attention))
}
