"""What each technique promises, in one module per technique: its configuration, result and packed
types, argument checks and host-side geometry. The ops, the reference and the integration all read
their contract from here, so they accept and refuse the same things.

- :mod:`~vidllm_ext.contracts.frame_drop`, :mod:`~vidllm_ext.contracts.token_merge`,
  :mod:`~vidllm_ext.contracts.routing`, :mod:`~vidllm_ext.contracts.kv_quant`,
  :mod:`~vidllm_ext.contracts.kv_attention`: one per technique.
- :mod:`~vidllm_ext.contracts.checks`: the checks every technique shares (tensors, dtypes, ints);
  :mod:`~vidllm_ext.contracts.structure`: value checks of index structures
  (``VIDLLM_CHECK_STRUCTURES``).
"""
