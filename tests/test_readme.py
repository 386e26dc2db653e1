"""The README is a promise: its command blocks run as written, twice, and print what it says they print.

Commands are read out of README.md (not copied here), run from a folder where `examples/` is the
repository's, so a change to either the README or the commands that breaks the promise fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block (comments dropped)."""
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
            for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    assert words[0] == "clibd", command
    script = "import sys; from clibd_cli.app import main; sys.argv[0] = 'clibd'; main()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    done = subprocess.run([sys.executable, "-c", script, *words[1:]], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done


@pytest.fixture
def reader(tmp_path: Path) -> Path:
    """A folder as a reader has it after cloning: `examples/` at hand."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def test_photo_block_runs_twice_and_prints_what_the_readme_says(reader):
    text = section("Photos, on the bundled demo model")
    commands = bash_blocks(text)[0]
    assert [c.split()[1] for c in commands] == ["build-index", "calibrate", "classify"]
    promised = re.search(r"`(\d+ photos on cpu: [^`]+)`", " ".join(text.split())).group(1)
    for attempt in range(2):  # the second time over the first run's outputs
        outputs = [run(command, reader) for command in commands]
        calibrated = " ".join(outputs[1].stdout.split())
        for rank in ("genus", "species"):
            assert f"{rank} is never called" in calibrated, calibrated
        summary = outputs[2].stderr.strip().splitlines()[-1]
        assert summary == promised, (attempt, summary)
    calls = [line for line in outputs[2].stdout.splitlines() if ".jpg" in line]
    assert len(calls) == int(promised.split()[0])
    assert (reader / "hits.tsv").exists()


@pytest.mark.slow
def test_evaluation_block_runs_on_files_a_reader_has(reader):
    commands = bash_blocks(section("Evaluating models"))[0]
    assert [c.split()[1] for c in commands] == ["simulate", "evaluate", "evaluate", "split"]
    for command in commands:
        run(command, reader)
    report = json.loads((reader / "report.json").read_text())
    assert report["open_set"] and report["open_set_precision"] == 0.95
    assert (reader / "plots" / "accuracy.png").stat().st_size > 0
    assert "split" in (reader / "demo_split.tsv").read_text().splitlines()[0].split("\t")
    run(commands[-1], reader)  # again, over its own output


def test_extras_the_readme_names_exist():
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = set(re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1], flags=re.M))
    named = {extra for group in re.findall(r"`\[([\w,]+)\]`", section("Install")) for extra in group.split(",")}
    assert named and named <= declared, named - declared
    assert {"train", "export", "plots", "hnsw", "raw"} <= named


def test_classify_columns_are_what_the_readme_says():
    """The README said classify's columns were all of match's plus three; match's identity columns are not."""
    from clibd_cli.classify import CLASSIFY_COLUMNS
    from clibd_cli.report import MATCH_COLUMNS

    text = " ".join(README.split())
    assert ("Output columns are those of `clibd match` up to `flags` (no `identity` or `overlap`: photos are not "
            "aligned) plus `against`, `photos` and `error`.") in text
    upto = MATCH_COLUMNS[: MATCH_COLUMNS.index("flags") + 1]
    assert [*upto, "against", "photos", "error"] == CLASSIFY_COLUMNS
