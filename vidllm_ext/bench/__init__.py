"""Benchmarks of the kernels against their PyTorch baselines (``python -m vidllm_ext bench``).

One module per technique says what to measure (its cases, cost model and targets):
:mod:`~vidllm_ext.bench.frame_drop`, :mod:`~vidllm_ext.bench.token_merge`,
:mod:`~vidllm_ext.bench.routing`, :mod:`~vidllm_ext.bench.kv_quant`,
:mod:`~vidllm_ext.bench.kv_attention`; :mod:`~vidllm_ext.bench.families` lists them.

- :mod:`vidllm_ext.bench.shapes`: every family's named shapes and the input generators.
- :mod:`vidllm_ext.bench.harness`: the one run loop (measure, cost model to GB/s and the fraction
  of copy bandwidth, the report).
- :mod:`vidllm_ext.bench.timing`: timing (CPU and CUDA) and the copy-bandwidth probe.
- :mod:`vidllm_ext.bench.facts`: run facts (device, commit, date) and results files.
- :mod:`vidllm_ext.bench.tables`: text and Markdown tables.
- :mod:`vidllm_ext.bench.cli`: the command line.
"""
