"""Running `vidllm-ext demo` as a user does: a subprocess of this Python."""

import subprocess
import sys


def run_demo(*args):
    strip = [] if "--strip" in args else ["--strip", ""]  # no PNG in the working directory
    return subprocess.run(
        [sys.executable, "-m", "vidllm_ext", "demo", "--new-tokens", "2", *strip, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
