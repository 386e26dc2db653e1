"""Shared fixtures: synthetic barcode references with realistic divergences, encoded test images, the real data.

Synthetic references are built top-down like a gene tree: each order gets a random ancestral COI-like
sequence, and every family, genus, species and specimen is a substituted copy of its parent.  With the
default rates two specimens of one species differ at ~1 % of sites, two species of one genus at ~10 %
and two genera at ~20 %, which is what real COI-5P barcodes look like.
"""

from __future__ import annotations

import csv
import gzip
import io
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clibd_cli.schema import RANKS, Specimen
from clibd_cli.sequences import SequenceRecord

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_REASON = (f"real BOLD/BIOSCAN samples not found at {SHARED}; they exist only in the clibd "
                 "development setup and are never copied into the repository")
requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_REASON)

BASES = "ACGT"
ORDERS = ("Diptera", "Lepidoptera", "Coleoptera", "Hymenoptera")
_SYLLABLES = ("ba", "ce", "di", "do", "fa", "ge", "ha", "ki", "lo", "ma", "ne", "pi", "ro", "sa", "te",
              "vi", "xo", "zu", "chi", "phy", "the", "stra", "lyn", "mor")


def shared_path(relative: str) -> Path:
    """A file under ../shared/data, skipping the test with a clear reason when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: {SHARED_REASON}")
    return path


# Image fixtures: encoded blobs, shared by the decoding and photo-collection tests.


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height RGB pixels, with a tiny IDAT: a decompression-bomb probe."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def random_sequence(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list(BASES), size=length))


def substitute(sequence: str, changes: int, rng: np.random.Generator) -> str:
    """Exactly ``changes`` sites, drawn without replacement, each changed to the next base (A→C→G→T→A)."""
    bases = list(sequence)
    for i in rng.choice(len(bases), size=changes, replace=False):
        bases[i] = "ACGT"[("ACGT".index(bases[i]) + 1) % 4]
    return "".join(bases)


def mutate(sequence: str, rate: float, rng: np.random.Generator) -> str:
    """Substitute each site with probability `rate` by one of the three other bases."""
    codes = np.frombuffer(sequence.encode(), dtype=np.uint8).copy()
    sites = np.flatnonzero(rng.random(len(codes)) < rate)
    lookup = np.frombuffer(BASES.encode(), dtype=np.uint8)
    for site in sites:
        current = BASES.index(chr(codes[site]))
        codes[site] = lookup[(current + rng.integers(1, 4)) % 4]
    return codes.tobytes().decode()


def divergence(a: str, b: str) -> float:
    """Fraction of differing sites of two equal-length sequences."""
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


class _Names:
    """Unique, pronounceable, deterministic Latin-looking names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.used = rng, set()

    def stem(self, syllables: int = 3) -> str:
        while True:
            word = "".join(self.rng.choice(_SYLLABLES, size=syllables))
            if word not in self.used:
                self.used.add(word)
                return word


def make_reference(seed: int = 0, *, orders: int = 2, families: int = 2, genera: int = 2, species: int = 3,
                   specimens: int = 4, length: int = 600, family_rate: float = 0.08,
                   genus_rate: float = 0.05, species_rate: float = 0.05, specimen_rate: float = 0.005,
                   id_prefix: str = "SYN") -> list[Specimen]:
    """A synthetic reference: orders × families × genera × species × specimens barcodes, as
    :class:`~clibd_cli.schema.Specimen` records ``Specimen(id, order, family, genus, species, bin, sequence)``."""
    rng = np.random.default_rng(seed)
    names = _Names(rng)
    out: list[Specimen] = []
    bin_number = 0
    for o in range(orders):
        order = ORDERS[o % len(ORDERS)] + ("" if o < len(ORDERS) else str(o))
        order_seq = random_sequence(rng, length)
        for _f in range(families):
            family = names.stem(2).capitalize() + "idae"
            family_seq = mutate(order_seq, family_rate, rng)
            for _g in range(genera):
                genus = names.stem(3).capitalize()
                genus_seq = mutate(family_seq, genus_rate, rng)
                for _s in range(species):
                    name = f"{genus} {names.stem(3)}"
                    species_seq = mutate(genus_seq, species_rate, rng)
                    bin_number += 1
                    bin_uri = f"BOLD:AC{chr(65 + bin_number // 10000 % 26)}{bin_number % 10000:04d}"
                    for _i in range(specimens):
                        out.append(Specimen(f"{id_prefix}{len(out) + 1:05d}-24", order, family, genus, name,
                                            bin_uri, mutate(species_seq, specimen_rate, rng)))
    return out


def fasta_header(s: Specimen, style: str) -> str:
    if style == "pipe":
        return f"{s.id}|{s.order}|{s.family}|{s.genus}|{s.species}|{s.bin}"
    if style == "sintax":
        return f"{s.id};tax=o:{s.order},f:{s.family},g:{s.genus},s:{s.species.replace(' ', '_')};"
    if style == "bold":
        return f"{s.id}|{s.species}|COI-5P"
    if style == "bare":
        return s.id
    raise ValueError(style)


def write_fasta(path: Path, specimens, style: str = "pipe", width: int = 0) -> Path:
    """Write specimens as FASTA (gzip when the name ends in .gz); `width` wraps sequence lines."""
    lines = []
    for s in specimens:
        lines.append(">" + fasta_header(s, style))
        seq = s.sequence
        lines.extend([seq[i : i + width] for i in range(0, len(seq), width)] if width else [seq])
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def to_records(specimens) -> list[SequenceRecord]:
    """Specimens as the records `read_sequences` would give for them."""
    return [SequenceRecord(s.id, s.sequence, dict(zip(RANKS, s.lineage, strict=True)), s.bin,
                           f"synthetic:{s.id}") for s in specimens]


def write_table(path: Path, header: list[str], rows: list[list[str]], delimiter: str) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def reference_specimens() -> list[Specimen]:
    """96 barcodes: 2 orders × 2 families × 2 genera × 3 species × 4 specimens."""
    return make_reference(seed=0)


@pytest.fixture(scope="session")
def split_reference() -> tuple[list[Specimen], list[Specimen], list[Specimen]]:
    """(reference, queries of reference species, queries of species absent from the reference).

    Each genus has 4 species of 5 specimens: species 0-2 give 4 reference barcodes and 1 query each,
    species 3 is left out of the reference entirely and gives 5 "new species" queries.
    """
    everything = make_reference(seed=7, species=4, specimens=5, id_prefix="SPL")
    reference, known, novel = [], [], []
    species_order = list(dict.fromkeys(s.species for s in everything))
    absent = {name for i, name in enumerate(species_order) if i % 4 == 3}
    seen: dict[str, int] = {}
    for s in everything:
        if s.species in absent:
            novel.append(s)
            continue
        seen[s.species] = seen.get(s.species, 0) + 1
        (known if seen[s.species] == 5 else reference).append(s)
    return reference, known, novel


@pytest.fixture(scope="session")
def reference_fasta(tmp_path_factory, reference_specimens) -> Path:
    return write_fasta(tmp_path_factory.mktemp("ref") / "reference.fasta", reference_specimens)


# ---------------------------------------------------------------------------------------------
# A tiny (untrained) CLIBD model as a `clibd train` checkpoint, its synthetic specimens and its bundle.

@dataclass
class TinyModel:
    sim: Path  # simulate folder: specimens.tsv, images/
    checkpoint: Path  # RUN/checkpoints/best.pt, RUN/text_tokenizer
    bundle: Path  # exported with --int8 and real samples
    model: object  # the torch CLIBDModel (eval mode)


def make_checkpoint(run: Path, texts: list[str], image_size: int = 32, seed: int = 0):
    """A checkpoint in `clibd train`'s format (model, model_config, config, text tokenizer beside it)."""
    import torch

    from clibd_training.models import build_model, tiny_config
    from clibd_training.text_tokenizer import train_text_tokenizer

    torch.manual_seed(seed)
    tokenizer = train_text_tokenizer(texts, out_dir=run / "text_tokenizer")
    config = tiny_config()
    config.image.image_size = image_size
    model = build_model(config, tokenizer, load_pretrained=False).eval()
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    path = run / "checkpoints" / "best.pt"
    torch.save({"model": model.state_dict(), "model_config": config.to_dict(), "step": 1,
                "config": {"name": "test", "data": {"image": {"size": image_size, "resize": image_size + 4,
                                                              "crop": "center"}}}}, path)
    return path, model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    from clibd_cli.sequences import taxonomy_text
    from clibd_export.onnx import Samples, export_bundle, load_checkpoint
    from clibd_training.synthetic import write_simulation

    root = tmp_path_factory.mktemp("tiny_model")
    sim = root / "sim"
    write_simulation(sim, n_species=8, image_size=32, hdf5=False)
    with open(sim / "specimens.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    texts = [taxonomy_text(row) for row in rows]
    checkpoint, model = make_checkpoint(root / "run", texts)
    samples = Samples(images=[sim / row["image_file"] for row in rows[:24]],
                      barcodes=[row["nucleotides"] for row in rows[:24]], texts=texts[:24])
    bundle = root / "bundle"
    export_bundle(load_checkpoint(checkpoint), bundle, int8=True, samples=samples)
    return TinyModel(sim, checkpoint, bundle, model)


def read_rows(path: Path) -> list[dict]:
    """A CSV/TSV output or input table as dicts (tab-separated for .tsv, comma otherwise)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if Path(path).suffix == ".tsv" else ","))


def write_dicts(path: Path, rows: list[dict]) -> Path:
    """Dict rows as a TSV with the first row's keys as header."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def clibd_ok(*args):
    """Run `clibd ARGS…` in-process and require success; returns typer's result."""
    from typer.testing import CliRunner

    from clibd_cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# ------------------------------------------------------------------------------- the fault suite's CLI checks

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    """Run the CLI in-process (typer's runner), arguments as text."""
    from typer.testing import CliRunner

    from clibd_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def clibd(*args, **kwargs) -> subprocess.Popen:
    """Start the CLI as its own process (for kills, signals and concurrent writers)."""
    return subprocess.Popen([sys.executable, "-m", "clibd_cli.app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)


def one_error_line(result, *mentions: str) -> str:
    """Exit code 2, no traceback, a single 'error:' line on stderr that names each of ``mentions``."""
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]
