"""The shipped demo: a small trained video LLM and the clips it answers questions about.

- :mod:`~vidllm_ext.demo.task`: the synthetic video QA task (clips, questions, answers).
- :mod:`~vidllm_ext.demo.processor`: its word-level tokenizer and Qwen2.5-VL-style processor.
- :mod:`~vidllm_ext.demo.model`: load the shipped weights (``weights/``) and ask questions.
- :mod:`~vidllm_ext.demo.train`: ``python -m vidllm_ext.demo.train`` trains such a model;
  :mod:`~vidllm_ext.demo.augment` is its token-drop augmentation.
- :mod:`~vidllm_ext.demo.eval`: accuracy over test clips; :mod:`~vidllm_ext.demo.strip`: the
  PNG strip of what each technique kept.
- :mod:`~vidllm_ext.demo.run`: ``vidllm-ext demo`` (its names are also read from this package, as
  from the former module ``vidllm_ext.demo``).
"""

from __future__ import annotations

_SUBMODULES = ("augment", "eval", "model", "processor", "run", "strip", "task", "train")


def __getattr__(name: str):
    # The former module vidllm_ext.demo is now vidllm_ext.demo.run; importing it on first use keeps
    # `import vidllm_ext.demo.task` free of transformers.
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(f"module 'vidllm_ext.demo' has no attribute {name!r}")
    from vidllm_ext.demo import run

    try:
        return getattr(run, name)
    except AttributeError:
        raise AttributeError(f"module 'vidllm_ext.demo' has no attribute {name!r}") from None
