"""The library API (clibd_cli.api): the README's example runs, the CLI and Python get the same calls,
the library returns its notes instead of printing, and the commands stay thin wrappers."""

from __future__ import annotations

import ast
import csv
import io
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, invoke

EXAMPLES = ROOT / "examples"


def readme_example() -> str:
    """The Python block of the README's "Use from Python" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Use from Python\n(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Use from Python' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "the section has no python code block"
    return block.group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    """The example is written for the repository root; run here, its example paths point there."""
    code = readme_example().replace('"examples/', f'"{EXAMPLES.as_posix()}/')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.splitlines()
    truth = {r["query_id"]: r for r in csv.DictReader((EXAMPLES / "queries_truth.tsv").open(), delimiter="\t")}
    for line in lines[:3]:  # three calls: id, status, rank, species, identity
        query, status, rank, *_ = line.split()
        assert query in truth and status == "assigned" and rank == "species"
        assert truth[query]["species"] in line
    assert lines[3] == "40 queries: 32 assigned, 8 novel_candidate"  # what the README says `clibd match` prints
    assert re.fullmatch(r"indexed 76 barcodes in \d+ s", lines[4])
    photos = re.fullmatch(r"52 photos: (\{.*\})", lines[5])
    assert photos, lines[5]
    ranks = ast.literal_eval(photos.group(1))
    assert sum(ranks.values()) == 52 and set(ranks) <= {"none", "order", "family", "genus", "species"}
    assert (tmp_path / "demo_index" / "index.json").exists()  # written where the example runs, nowhere else


def test_match_from_python_equals_the_cli(tmp_path):
    from clibd_cli import api

    result = invoke("match", EXAMPLES / "queries.fasta", "--index", EXAMPLES / "reference.fasta", "-f", "csv")
    assert result.exit_code == 0, result.output
    cli_rows = list(csv.DictReader(io.StringIO(result.stdout)))
    rows = [r.row for r in api.match(EXAMPLES / "queries.fasta", EXAMPLES / "reference.fasta")]
    keys = ("query_id", "status", "rank", "order", "family", "genus", "species", "top_hit_id")
    assert [tuple(str(r[k]) for k in keys) for r in rows] == [tuple(r[k] for k in keys) for r in cli_rows]


def test_library_returns_notes_instead_of_printing(tmp_path, capsys):
    from clibd_cli import api

    reference = tmp_path / "ref.fasta"
    lines = (EXAMPLES / "reference.fasta").read_text().splitlines()[:40]
    reference.write_text("\n".join([*lines, ">no_taxonomy", "ACGT" * 60]) + "\n")
    heard = []
    index = api.open_index(reference, notify=heard.append)
    assert capsys.readouterr() == ("", "")  # nothing printed
    assert [str(n) for n in index.notes] == [str(n) for n in heard]
    assert "warning: 1 reference records have no taxonomy and were left out." in [str(n) for n in heard]
    assert any(n.level == "note" and "too few labelled references" in n.text for n in index.notes)
    assert index.temporary and index.index.size == 20

    calls = list(api.match(EXAMPLES / "queries.fasta", index, options=api.MatchOptions(top_k=2), skip={"SYN000288"}))
    assert len(calls) == 39 and all(len(c.hits) <= 2 for c in calls)
    assert capsys.readouterr() == ("", "")


def test_build_index_report(tmp_path):
    from clibd_cli import api
    from clibd_cli.errors import ClibdError

    heard = []
    report = api.build_index(tmp_path / "idx", [EXAMPLES / "reference.fasta"], notify=heard.append)
    part = report.parts["dna"]
    assert part.manifest["counts"]["records"] == 193 and report.notes == heard == []
    assert part.manifest["calibration"]["method"].startswith("open-set")
    try:
        api.build_index(tmp_path / "idx", [EXAMPLES / "reference.fasta"])
    except ClibdError as exc:
        assert "already exists" in str(exc)
    else:
        raise AssertionError("a second build over the index must be refused")
    more = api.build_index(tmp_path / "idx", [EXAMPLES / "reference.fasta"],
                           options=api.BuildOptions(force=True, calibrate=False))
    assert more.parts["dna"].size == part.size


def test_cli_import_stays_light():
    """`clibd --help` must not pay for NumPy, onnxruntime, Biopython or torch: the commands import them."""
    code = ("import sys, clibd_cli.app; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'numpy', 'onnxruntime', 'Bio', 'torch', 'PIL'}); print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_commands_are_thin():
    """Every command parses, calls the library and prints: no body longer than 40 lines."""
    from clibd_cli.cli import COMMANDS

    for name, command in COMMANDS:
        function = command.__wrapped__
        tree = ast.parse(Path(sys.modules[function.__module__].__file__).read_text())
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function.__name__)
        first = node.body[1] if ast.get_docstring(node) else node.body[0]
        assert node.end_lineno - first.lineno + 1 < 40, name
