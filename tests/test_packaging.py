"""The built wheel, installed alone in a fresh venv, does the main job and a training step.

CI's editable install hides packaging mistakes (presets left out of the wheel, packages named
`training` or `export` at the top of site-packages): this installs what `pip install clibd` would.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def run(*cmd, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=out)
    (built,) = out.glob("clibd-*.whl")
    return built


def test_wheel_holds_namespaced_packages_and_presets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"clibd_cli", "clibd_training", "clibd_export"}
    presets = {Path(n).name for n in names if n.startswith("clibd_training/configs/")}
    assert {"tiny-cpu.yaml", "demo-cpu.yaml", "bioscan1m-idt.yaml", "bioscan5m-idt.yaml"} <= presets
    # Every module of the checkout is in the wheel (pyproject lists packages by name: a new subpackage
    # left out of the list would install a clibd that cannot import it).
    installed_as = {"clibd_cli": "clibd_cli", "training": "clibd_training", "export": "clibd_export"}
    expected = {f"{installed_as[folder]}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder in installed_as for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts}
    assert expected <= set(names), sorted(expected - set(names))


def test_installed_wheel_matches_and_trains(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    bin_ = venv / "bin"
    run(bin_ / "pip", "install", "-q", f"{wheel}[train]", cwd=tmp_path)
    work = tmp_path / "work"  # outside the checkout: nothing can be imported from the repository folders
    work.mkdir()
    run(bin_ / "python", "-c", "import importlib.util as u; import sys; "
        "sys.exit(any(u.find_spec(n) for n in ('training', 'export')))", cwd=work)

    calls = run(bin_ / "clibd", "match", ROOT / "examples/queries.fasta", "--index", ROOT / "examples/reference.fasta",
                cwd=work).stdout
    rows = list(csv.DictReader(io.StringIO(calls)))
    truth = {r["query_id"]: r for r in csv.DictReader((ROOT / "examples/queries_truth.tsv").open(), delimiter="\t")}
    assert len(rows) == len(truth) == 40
    assigned = [r for r in rows if r["status"] == "assigned" and r["rank"] == "species"]
    assert assigned and all(r["species"] == truth[r["query_id"]]["species"] for r in assigned)

    run(bin_ / "clibd", "simulate", "-o", work / "sim", "--species", "8", "--image-size", "64", cwd=work)
    run(bin_ / "clibd", "train", "--config", "tiny-cpu", "--data", work / "sim", "--output", work / "run",
        "--set", "max_steps=1", cwd=work)
    assert (work / "run" / "checkpoints" / "last.pt").stat().st_size > 0
