"""How fast `clibd --help` answers, and that the inference CLI never imports torch.

    python benchmarks/cli_startup.py [--runs 15]

Target: median wall time of `clibd --help` below 0.5 s.  `python -c pass` is timed in the same run
as the floor that no Python program can beat on this machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    clibd = shutil.which("clibd") or sys.exit("clibd is not on PATH (pip install -e .)")
    help_s = wall([clibd, "--help"], args.runs)
    match_help_s = wall([clibd, "match", "--help"], args.runs)
    floor_s = wall([sys.executable, "-c", "pass"], args.runs)
    probe = "import sys, clibd_cli.app; print(int(any(m.split('.')[0] in ('torch', 'timm', 'transformers') " \
            "for m in sys.modules)))"
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    body = (f"| command | median wall time ({args.runs} runs) |\n|---|---|\n"
            f"| `clibd --help` | {help_s * 1000:.0f} ms |\n| `clibd match --help` | {match_help_s * 1000:.0f} ms |\n"
            f"| `python -c pass` (floor) | {floor_s * 1000:.0f} ms |\n\n"
            f"Target `clibd --help` < 500 ms: {'met' if help_s < 0.5 else 'NOT met'}. "
            f"`import clibd_cli.app` loads torch/timm/transformers: {'yes' if heavy == '1' else 'no'}.")
    print(body)
    if not args.no_write:
        write_section("CLI start-up", body, "python benchmarks/cli_startup.py")


if __name__ == "__main__":
    main()
