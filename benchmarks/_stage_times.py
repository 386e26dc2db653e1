"""Run a `clibd` command in this process and print, as JSON, where its time went, stage by stage.

For benchmarks/match_speed.py: with ``--threads 1`` verification runs in line, so wrapping the functions
each stage calls times that stage exactly (no profiler's overhead): the graph searches (hnswlib, both
strands and the rivals' filtered searches, rescoring included), the diagonal stage (anchors and ungapped
segments of every candidate) and the Opal alignments.  What is left is start-up, encoding, ranking,
voting and writing.

    python benchmarks/_stage_times.py match QUERIES.fasta -i INDEX -o OUT.csv --threads 1 --force
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable

from clibd_cli import align
from clibd_cli.index import ReferenceIndex

spent: dict[str, float] = {}
calls: dict[str, int] = {}


def _timed(stage: str, function: Callable, count: Callable[..., int] = lambda *a, **k: 1) -> Callable:
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - start
            calls[stage] = calls.get(stage, 0) + count(*args, **kwargs)

    return wrapper


def main() -> None:
    align.align_many = _timed("opal", align.align_many, lambda query, targets: len(targets))
    align.diagonals = _timed("diagonal", align.diagonals)
    align.ungapped_many = _timed("diagonal", align.ungapped_many, lambda *a: 0)
    ReferenceIndex.search_vectors = _timed("graph", ReferenceIndex.search_vectors, lambda self, q, *a, **k: len(q))
    ReferenceIndex.search_allowed = _timed("graph", ReferenceIndex.search_allowed)
    from clibd_cli.app import main as clibd

    wall, cpu = time.perf_counter(), time.process_time()
    sys.argv = ["clibd", *sys.argv[1:]]
    try:
        clibd()
    except SystemExit as stop:
        if stop.code:
            raise
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                      "seconds": spent, "calls": calls}))


if __name__ == "__main__":
    main()
