"""One op's fuzz campaign: ``python campaign.py OP CALLS SEED PROGRESS_FILE``.

Before every call the input is written to PROGRESS_FILE, so that when the process dies (a
segfault, an abort, a sanitizer report) the parent test can say which input killed it. Contract
failures are printed (at most MAX_REPORTED of them) and make the exit status 1.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # hostile and specs; tests/support

from hostile import Failure, check_call, combine, describe, mutate  # noqa: E402
from specs import SPECS  # noqa: E402

MAX_REPORTED = 5


def run(op_name: str, calls: int, seed: int, progress: Path) -> int:
    rng = np.random.default_rng([seed, zlib.crc32(op_name.encode())])
    torch.manual_seed(seed)
    make = SPECS[op_name]
    failures = 0
    for call in range(calls):
        case = make(rng)
        mutations = [0, 1, 1, 1, 2][int(rng.integers(5))]
        names = list(rng.permutation(list(case.args))[:mutations])
        expect, description = "ok", []
        for name in names:
            text, outcome = mutate(rng, case, str(name))
            description += text
            expect = combine(expect, outcome) if description[:-1] else outcome
        label = "; ".join(description) or "valid input"
        report = f"{op_name} call {call} (seed {seed}), {label}, expected {expect}\n"
        progress.write_text(report + f"input: {describe(case)}\n")
        try:
            check_call(case, expect, label)
        except Failure as failure:
            failures += 1
            if failures <= MAX_REPORTED:
                print(f"FAIL {report}input: {describe(case)}\n{failure}\n", flush=True)
    progress.write_text(f"{op_name}: {calls} calls done\n")
    print(f"{op_name}: {calls} calls, {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    op, count, seed_arg, path = sys.argv[1:5]
    sys.exit(run(op, int(count), int(seed_arg), Path(path)))
