"""Tiny models with the packed KV cache: a small-group configuration and a padded batch."""

from support.models import SyntheticVideo, make_inputs
from vidllm_ext import KVQuantConfig

SMALL = KVQuantConfig(1.5, 1.58, group_size=4, residual_length=8)


def two_videos(family):
    return make_inputs(family, [SyntheticVideo(), SyntheticVideo(seed=1, moving=(1, 2))], [3, 5])
