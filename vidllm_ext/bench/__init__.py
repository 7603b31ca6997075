"""Benchmarks of the kernels against their PyTorch references (``python -m vidllm_ext bench``).

- :mod:`vidllm_ext.bench.shapes`: named realistic input sizes and video-like input generators.
- :mod:`vidllm_ext.bench.harness`: timing (CPU and CUDA), copy bandwidth, tables, run facts.
- :mod:`vidllm_ext.bench.frame_drop`: frame-difference token drop cases and their cost model.
- :mod:`vidllm_ext.bench.cli`: the command line.
"""
