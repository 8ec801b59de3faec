"""Soak the interrupt handling: N signals (SIGINT or SIGTERM) sent at random moments to running audits, each
checked as the suite's signal tests check one (exit 0 or 128 + signal, no traceback, results that follow the
schema and say they are incomplete, ``--resume`` ending with the uninterrupted run's results.json).

    python scripts/interrupt_soak.py 200     # about 10 s a run on 2 cores

It runs ``tests/cli/test_signals.py``'s random-moment test with ``ONNXREDUND_SOAK_RUNS=N``: one harness for the
suite and the soak.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    test = "tests/cli/test_signals.py::test_signals_at_random_moments_never_leave_a_result_out_of_range_or_unmarked"
    env = {**os.environ, "ONNXREDUND_SOAK_RUNS": str(runs)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "--timeout",
        str(60 * runs + 120),
        test,
    ]
    print(f"{runs} signals at random moments: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
