"""`vidllm-ext demo --model PATH` on saved tiny checkpoints of the newer families (issue 18)."""

import pytest
from support.demo import run_demo
from support.models import NEW_FAMILIES, build_model

pytest.importorskip("transformers")


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_demo_with_a_local_checkpoint_of_each_new_family(tmp_path, family):
    build_model(family).save_pretrained(tmp_path / family)
    result = run_demo("--model", str(tmp_path / family))
    assert result.returncode == 0, result.stderr
    assert f"model: {tmp_path / family}" in result.stdout
    assert "video tokens" in result.stdout and "KV-cache KiB" in result.stdout
