"""The demo's PNG strip: written without a plotting library, readable by one."""

import numpy as np
import pytest
import torch

from vidllm_ext.demo.strip import GREY_SHARE, png_bytes, save_strip


def test_png_bytes_decode_to_the_same_pixels(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    pixels = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(png_bytes(pixels))
    decoded = np.rint(image.imread(tmp_path / "a.png") * 255).astype(np.uint8)
    assert np.array_equal(decoded, pixels)


def test_dropped_tokens_are_greyed_and_kept_ones_untouched(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    frames = np.random.default_rng(1).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    keep = torch.tensor([[True, False, True, True], [False, True, True, True]])  # 2 x 2 tokens
    path = save_strip(frames, keep, tmp_path / "strip.png", frames_per_step=2)
    strip = np.rint(image.imread(path) * 255).astype(np.uint8)
    assert strip.shape == (12, 4 * 12 + 3 * 2, 3)
    first = strip[:, :12]
    assert np.array_equal(first[:6, :6], frames[0][:6, :6])  # token 0 kept
    faded = frames[0][:6, 6:].astype(np.float32) * (1 - GREY_SHARE) + 128 * GREY_SHARE
    assert np.abs(first[:6, 6:].astype(np.float32) - faded).max() <= 0.5  # token 1 dropped
    third = strip[:, 2 * 14 : 2 * 14 + 12]  # frame 2 belongs to step 1: token 0 dropped
    assert not np.array_equal(third[:6, :6], frames[2][:6, :6])
