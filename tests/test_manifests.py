"""Typed manifests (issue 11): index.json and clibd-model.json are validated on load, after their checksum.

A field of the wrong type or a missing one, in a manifest whose checksum is correct (re-sealed after the
edit, as a buggy writer or a deliberate edit would leave it), is refused through the CLI with exit code 2
and one line naming the file, the field path and what to do.  What is written is unchanged: the typed
models are only read, so existing indexes and bundles open and their checksums still match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import get_args

import pytest
from conftest import ROOT, invoke, one_error_line

from clibd_cli.bundle import MANIFEST as BUNDLE_MANIFEST
from clibd_cli.bundle import BundleError, ModelBundle
from clibd_cli.checksums import MANIFEST_CHECKSUM, sealed
from clibd_cli.errors import InputError
from clibd_cli.index import MANIFEST, RECORDS_DB, ReferenceIndex, index_modalities
from clibd_cli.manifests import BundleManifest, IndexManifest, Modality, describe
from clibd_cli.schema import MODALITIES

EXAMPLES = ROOT / "examples"
QUERIES = EXAMPLES / "queries.fasta"


@pytest.fixture(scope="module")
def built_index(tmp_path_factory) -> Path:
    index = tmp_path_factory.mktemp("manifests") / "index"
    result = invoke("build-index", "--barcodes", EXAMPLES / "reference.fasta", "-o", index, "--no-calibrate")
    assert result.exit_code == 0, result.output
    return index


def index_copy(built_index: Path, folder: Path) -> tuple[Path, dict]:
    shutil.copytree(built_index, folder)
    return folder, json.loads((folder / MANIFEST).read_text())


def write_index_manifest(index: Path, manifest: dict) -> None:
    (index / MANIFEST).write_text(json.dumps(sealed(manifest), indent=2) + "\n")  # a correct checksum


def match(index: Path, tmp_path: Path, out: str = "calls.csv"):
    return invoke("match", QUERIES, "--index", index, "-o", tmp_path / out)


def set_records_many(m):
    m["parts"]["dna"]["counts"]["records"] = "many"


def set_thresholds_text(m):
    m["parts"]["dna"]["thresholds"] = "0.9 everywhere"


def set_species_threshold_text(m):
    m["parts"]["dna"]["thresholds"]["species"] = "0.97"


def drop_encoder_dim(m):
    del m["parts"]["dna"]["encoder"]["dim"]


def set_dim_float(m):
    m["parts"]["dna"]["encoder"]["dim"] = 1024.0


def drop_kmer_k(m):
    del m["parts"]["dna"]["encoder"]["k"]


def add_unknown_part(m):
    m["parts"]["sound"] = m["parts"]["dna"]


def set_negative_vectors(m):
    m["parts"]["dna"]["counts"]["vectors"] = -1


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (set_records_many, "field parts.dna.counts.records", 'should be a valid integer, not "many"'),
    (set_thresholds_text, "field parts.dna.thresholds", "should be a valid dictionary"),
    (set_species_threshold_text, "field parts.dna.thresholds.species", 'should be a valid number, not "0.97"'),
    (drop_encoder_dim, "field parts.dna.encoder.dim", "is missing"),
    (set_dim_float, "field parts.dna.encoder.dim", "should be a valid integer, not 1024.0"),
    (drop_kmer_k, "field parts.dna.encoder", "a kmer-profile encoder needs k and sqrt"),
    (add_unknown_part, "parts has the key 'sound'", "should be 'image', 'dna' or 'text'"),
    (set_negative_vectors, "field parts.dna.counts.vectors", "should be greater than or equal to 0"),
])
def test_wrong_index_field_is_one_error_line(built_index, tmp_path, edit, field, problem):
    index, manifest = index_copy(built_index, tmp_path / "index")
    edit(manifest)
    write_index_manifest(index, manifest)
    line = one_error_line(match(index, tmp_path), str(index / MANIFEST), field, problem, "Rebuild the index.")
    assert "checksum" not in line and "modified" not in line  # the checksum is right: validation speaks
    assert not (tmp_path / "calls.csv").exists()
    with pytest.raises(InputError, match="Rebuild the index"):
        ReferenceIndex.load(index)


def test_the_checksum_is_checked_before_the_fields(built_index, tmp_path):
    """An edit without re-sealing is still reported as an edit, not as a type problem."""
    index, manifest = index_copy(built_index, tmp_path / "index")
    set_records_many(manifest)
    (index / MANIFEST).write_text(json.dumps(manifest, indent=2))
    one_error_line(match(index, tmp_path), "modified by hand")


def test_several_problems_are_counted_on_the_one_line(built_index, tmp_path):
    index, manifest = index_copy(built_index, tmp_path / "index")
    set_records_many(manifest)
    drop_encoder_dim(manifest)
    manifest["parts"]["dna"]["fingerprint"] = 7
    write_index_manifest(index, manifest)
    one_error_line(match(index, tmp_path), "field parts.dna.", "(and 2 more problems)")


def test_extra_keys_are_kept_and_the_manifest_is_rewritten_unchanged(built_index, tmp_path):
    """Older and newer writers may add keys; and what clibd writes back is byte for byte what it read."""
    index, manifest = index_copy(built_index, tmp_path / "index")
    manifest["written_by"] = "a newer clibd"
    manifest["parts"]["dna"]["encoder"]["note"] = {"any": ["thing"]}
    manifest["parts"]["dna"]["counts"]["subfamily"] = 4
    write_index_manifest(index, manifest)
    before = (index / MANIFEST).read_bytes()
    loaded = ReferenceIndex.load(index)
    assert loaded.manifest["encoder"]["note"] == {"any": ["thing"]}  # callers still read dicts
    assert loaded.spec.counts.records == loaded.size == 193 and loaded.spec.encoder.dim == 1024
    loaded.save_manifest()  # rewrites this part's entry from the dict, as after a calibration
    assert (index / MANIFEST).read_bytes() == before
    assert match(index, tmp_path).exit_code == 0


def test_calibration_changes_go_through_the_typed_view(built_index, tmp_path):
    index, _ = index_copy(built_index, tmp_path / "index")
    loaded = ReferenceIndex.load(index)
    thresholds = {"order": 0.8, "family": 0.85, "genus": 0.9, "species": 0.97}
    loaded.set_thresholds(thresholds, {"method": "test"})
    loaded.set_cross_thresholds("image", thresholds, {"method": "cross test"})
    assert loaded.thresholds == thresholds and loaded.thresholds_for("image") == thresholds
    loaded.save_manifest()
    again = ReferenceIndex.load(index)
    assert again.manifest["calibration"] == {"method": "test"}
    assert again.spec.cross_thresholds["image"].calibration.method == "cross test"


def flat_format3(built_index: Path, folder: Path) -> Path:
    """The format-3 layout: data files beside index.json, no checksums, no records/search keys."""
    index, manifest = index_copy(built_index, folder)
    generation = index / manifest["records"].split("/")[0]
    for path in generation.iterdir():
        path.rename(index / path.name)
    generation.rmdir()
    manifest["format_version"] = 3
    for key in ("records", "records_sha256", MANIFEST_CHECKSUM):
        manifest.pop(key)
    part = manifest["parts"]["dna"]
    part["file"] = Path(part["file"]).name
    part.pop("sha256")
    part.pop("search")
    (index / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return index


def test_format3_index_is_still_read_and_validated(built_index, tmp_path):
    index = flat_format3(built_index, tmp_path / "flat")
    assert (index / RECORDS_DB).exists() and index_modalities(index) == ["dna"]
    assert match(index, tmp_path).exit_code == 0
    manifest = json.loads((index / MANIFEST).read_text())
    set_records_many(manifest)  # format 3 has no checksum: validation is its only guard
    (index / MANIFEST).write_text(json.dumps(manifest, indent=2))
    one_error_line(match(index, tmp_path, "again.csv"), "field parts.dna.counts.records", "Rebuild the index.")


# ------------------------------------------------------------------------------------- bundles

@pytest.fixture
def bundle(tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(EXAMPLES / "demo-model", folder)
    return folder


def write_bundle_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / BUNDLE_MANIFEST).write_text(json.dumps(sealed(manifest), indent=2) + "\n")


def embed(bundle: Path, tmp_path: Path):
    return invoke("embed", EXAMPLES / "demo-barcodes.tsv", "--modality", "dna", "--model", bundle,
                  "-o", tmp_path / "e.npy")


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (lambda m: m.update(embed_dim="64"), "field embed_dim", 'should be a valid integer, not "64"'),
    (lambda m: m.update(embed_dim=0), "field embed_dim", "should be greater than 0"),
    (lambda m: m["modalities"]["dna"].pop("sha256"), "field modalities.dna.sha256", "is missing"),
    (lambda m: m["modalities"]["dna"]["tokenizer"].update(k="4"), "field modalities.dna.tokenizer.k",
     "should be a valid integer"),
    (lambda m: m["modalities"]["text"]["tokenizer"].update(max_len=[20]), "field modalities.text.tokenizer.max_len",
     "should be a valid integer, not [20]"),
    (lambda m: m["modalities"]["image"]["preprocessing"].update(size="64"),
     "field modalities.image.preprocessing.size", "should be a valid integer"),
    (lambda m: m.update(modalities=["image", "dna"]), "field modalities", "should be a valid dictionary"),
])
def test_wrong_bundle_field_is_one_error_line(bundle, tmp_path, edit, field, problem):
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    edit(manifest)
    write_bundle_manifest(bundle, manifest)
    line = one_error_line(embed(bundle, tmp_path), str(bundle / BUNDLE_MANIFEST), field, problem,
                          "Re-export the bundle.")
    assert "checksum" not in line
    assert not (tmp_path / "e.npy").exists()
    with pytest.raises(BundleError, match="Re-export the bundle"):
        ModelBundle.load(bundle)


def test_demo_bundle_opens_typed_with_its_extra_keys(bundle, tmp_path):
    before = (bundle / BUNDLE_MANIFEST).read_bytes()
    loaded = ModelBundle.load(bundle, device="cpu")
    assert (bundle / BUNDLE_MANIFEST).read_bytes() == before
    assert loaded.spec.embed_dim == loaded.dim == 64 and loaded.modalities == ("image", "dna", "text")
    assert loaded.manifest["model_config"]["embed_dim"] == 64  # unread keys stay in the dict
    assert loaded.preprocessing.size == 64 and loaded.dna_tokenizer().k == 4
    assert embed(bundle, tmp_path).exit_code == 0


def test_a_bundle_made_in_memory_is_validated_too(bundle):
    """`clibd export` builds ModelBundle objects from the manifest it is writing: same checks."""
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    manifest["fingerprint"] = None
    with pytest.raises(BundleError, match="field fingerprint should be a valid string, not null"):
        ModelBundle(bundle, manifest)


def test_models_name_the_modalities_of_the_schema():
    assert get_args(Modality) == MODALITIES
    assert set(IndexManifest.model_fields) >= {"format_version", "parts", "records", "manifest_sha256"}
    assert set(BundleManifest.model_fields) >= {"format", "embed_dim", "fingerprint", "modalities"}


def test_describe_reads_like_a_sentence():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        IndexManifest.model_validate({"format_version": 4, "parts": {"dna": {"counts": {}}}})
    text = describe(caught.value)
    assert text.startswith("field parts.dna.encoder is missing (and ") and text.endswith("more problems)")
