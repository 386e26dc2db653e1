"""Write one benchmark's section of benchmarks/RESULTS.md, replacing its previous run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is rewritten by the script named in it; numbers are from one run.\n"


def machine() -> str:
    """CPU model and core count (and GPU when one is visible) for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if gpu:
            text += f", GPU {gpu.splitlines()[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def invocation() -> str:
    """The command that ran this benchmark script, as a section records it (``--no-write`` left out)."""
    return "python benchmarks/" + Path(sys.argv[0]).name + "".join(f" {a}" for a in sys.argv[1:] if a != "--no-write")


def write_section(name: str, body: str, command: str, path: Path = RESULTS, measured_on: str | None = None) -> None:
    """Replace (or add) the section `name` with `body`, stamped with date, machine and command.

    `measured_on` names the machine when the numbers were measured elsewhere (e.g. a lent GPU).
    """
    stamp = f"_{dt.date.today().isoformat()} · {measured_on or machine()} · `{command}`_\n\n"
    section = f"<!-- {name}:start -->\n## {name}\n\n{stamp}{body.rstrip()}\n<!-- {name}:end -->\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)
