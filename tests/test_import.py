"""`import vidllm_ext` and the ops need neither transformers nor a GPU: the base install
(`pip install vidllm-ext`) declares neither. The HuggingFace integration says what it needs."""

import subprocess
import sys

BLOCK_TRANSFORMERS = "import sys; sys.modules['transformers'] = None\n"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TRANSFORMERS + code], capture_output=True, text=True
    )


def test_the_ops_import_and_run_without_transformers():
    result = run(
        "import torch, vidllm_ext\n"
        "mask = vidllm_ext.ops.dtd_keep_mask(torch.randn(3, 4, 8), 0.5)\n"
        "stream = vidllm_ext.DTDStream(threshold=0.5)\n"
        "config = vidllm_ext.KVQuantConfig(1.5, 1.58)\n"
        "print(tuple(mask.shape), vidllm_ext.build_info()['version'])\n"
    )
    assert result.returncode == 0, result.stderr
    assert "(3, 4)" in result.stdout


def test_the_integration_without_transformers_says_what_to_install():
    for name in ("patch", "StreamingSession", "PackedKVCache"):
        result = run(f"import vidllm_ext\nvidllm_ext.{name}\n")
        assert result.returncode != 0
        message = f"vidllm_ext.{name} needs transformers: pip install 'vidllm-ext[hf]'"
        assert message in result.stderr


def test_unknown_names_are_attribute_errors():
    result = run("import vidllm_ext\nvidllm_ext.no_such_name\n")
    assert "AttributeError: module 'vidllm_ext' has no attribute 'no_such_name'" in result.stderr
