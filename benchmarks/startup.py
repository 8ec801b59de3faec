"""How long the command line takes to answer --help, against importing the library it no longer loads for that,
in the same run (ratios; the machine's load moves both alike).

    python benchmarks/startup.py            # 5 runs each, medians
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 5
CASES = {
    "onnxredund --help": [sys.executable, "-m", "onnxredund", "--help"],
    "onnxredund audit -h": [sys.executable, "-m", "onnxredund", "audit", "-h"],
    "import the library (what --help loaded before)": [
        sys.executable,
        "-c",
        "import onnxredund.cli.console, onnxredund.analyses.audit, onnxredund.analyses.prune",
    ],
    "python itself": [sys.executable, "-c", "pass"],
}


def main() -> None:
    medians = {}
    for name, cmd in CASES.items():
        times = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        medians[name] = statistics.median(times)
    base = medians["import the library (what --help loaded before)"]
    for name, seconds in medians.items():
        print(f"{name:<50} {seconds:6.3f} s  {seconds / base:5.2f} x the library's import")


if __name__ == "__main__":
    main()
