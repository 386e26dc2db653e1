"""Training data layer (training.data): readers for every format, transforms and the dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")
pytest.importorskip("torchvision")

from conftest import SHARED, write_table  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from clibd_cli.errors import InputError  # noqa: E402
from clibd_cli.preprocess import ImagePreprocessing, load_image, preprocess_image  # noqa: E402
from clibd_cli.schema import taxonomy_text  # noqa: E402
from clibd_cli.tokenizer import KmerTokenizer  # noqa: E402
from clibd_training.data import (  # noqa: E402
    HDF5Image,
    ImageTransform,
    ImageTransforms,
    SpecimenDataset,
    build_label_maps,
    collate,
    detect_kind,
    load_specimens,
    read_bioscan1m,
    read_bioscan5m,
    read_clibd_hdf5,
    read_manifest,
    split_specimens,
)
from clibd_training.synthetic import HDF5_GROUPS, KEY_SPLITS, SPLITS, write_simulation  # noqa: E402

BIOSCAN1M = SHARED / "bioscan1m_metadata"
SHARED_REASON = (f"real BIOSCAN-1M metadata not found at {BIOSCAN1M}; it exists only in the clibd "
                 "development setup and is never copied into the repository")
SMALL = ImagePreprocessing(size=32, resize=36)
RAW_SMALL = ImagePreprocessing(size=32, resize=36, mean=None, std=None)


@pytest.fixture(scope="module")
def simulation(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    write_simulation(out, n_species=8, seed=0, image_size=64)
    return out


@pytest.fixture(scope="module")
def bioscan1m_files() -> list[Path]:
    files = sorted(BIOSCAN1M.glob("*.tsv")) if BIOSCAN1M.is_dir() else []
    if len(files) != 2:
        pytest.skip(SHARED_REASON)
    return files


@pytest.fixture()
def text_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "diptera", "##ptera", "##idae", "placus", "a", "b"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))


# ---------------------------------------------------------------------------------------------
# BIOSCAN-1M


def test_real_bioscan1m_metadata(bioscan1m_files, tmp_path):
    expected_rows = {"bba882e": 8265, "dba8b59": 8273}
    for path in bioscan1m_files:
        header = path.read_text().splitlines()[0].split("\t")
        # What the real small-dataset release has: no nucraw, no chunk_number (image_tar instead).
        assert {"processid", "sampleid", "uri", "order", "family", "genus", "species", "image_file"} <= set(header)
        assert "nucraw" not in header and "chunk_number" not in header and "image_tar" in header
        assert detect_kind(path) == "bioscan1m"
        specimens = load_specimens(path, image_root=tmp_path)
        assert len(specimens) == expected_rows[path.stem.rsplit("_", 1)[1]]
        assert len({s.id for s in specimens}) == len(specimens)
        assert all(s.sequence is None for s in specimens)
        assert all(s.bin.startswith("BOLD:") for s in specimens)
        assert all(s.taxonomy["order"] for s in specimens)
        labels = {s.taxonomy[rank] for s in specimens for rank in ("order", "family", "genus", "species")}
        assert "not_classified" not in labels and not any(label != label.strip() for label in labels)
        with_species = sum(bool(s.taxonomy["species"]) for s in specimens)
        assert 1000 < with_species < 1300  # most BIOSCAN-1M records have no species
        first = specimens[0]
        assert Path(first.image) == tmp_path / f"{first.image.rsplit('/', 1)[1]}"
        assert first.image.endswith(".jpg") and first.sampleid.startswith("BIOUG")
    assert all(s.image is None for s in read_bioscan1m(bioscan1m_files[0]))


def test_bioscan1m_with_dna_and_chunks(tmp_path):
    header = ["processid", "sampleid", "uri", "phylum", "class", "order", "family", "subfamily", "tribe", "genus",
              "species", "nucraw", "image_file", "chunk_number"]
    rows = [
        ["P1-21", "S1", "BOLD:AAA0001", "Arthropoda", "Insecta", "Diptera", "Sciaridae", "not_classified",
         "not_classified", "Bradysia", "Bradysia sp1", "nnacgt-acgu\n", "1.jpg", "3"],
        ["P2-21", "S2", "not_classified", "Arthropoda", "Insecta", "Hymenoptera", "not_classified",
         "not_classified", "not_classified", "not_classified", "not_classified", "", "2.jpg", "12.0"],
    ]
    path = write_table(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", header, rows, "\t")
    assert detect_kind(path) == "bioscan1m"
    one, two = read_bioscan1m(path, image_root=tmp_path / "images")
    assert one.sequence == "ACGTACGT" and two.sequence is None
    assert one.image == str(tmp_path / "images" / "part3" / "1.jpg")
    assert two.image == str(tmp_path / "images" / "part12" / "2.jpg")
    assert one.taxonomy == {"order": "Diptera", "family": "Sciaridae", "genus": "Bradysia", "species": "Bradysia sp1"}
    assert two.taxonomy == {"order": "Hymenoptera", "family": "", "genus": "", "species": ""}
    assert (one.bin, two.bin) == ("BOLD:AAA0001", "")


# ---------------------------------------------------------------------------------------------
# BIOSCAN-5M


def test_bioscan5m_csv(tmp_path):
    header = ["processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily", "genus",
              "species", "dna_bin", "dna_barcode", "country", "coord-lat", "coord-lon", "split", "chunk"]
    rows = [
        ["A1", "S1", "Sciaridae", "Arthropoda", "Insecta", "Diptera", "Sciaridae", "", "", "", "BOLD:AAB1234",
         "acgtRYacgt", "Canada", "45.1", "-75.2", "pretrain", "7"],
        ["A2", "S2", "Bradysia x", "Arthropoda", "Insecta", "Diptera", "Sciaridae", "", "Bradysia", "Bradysia x",
         "BOLD:AAB1235", "", "Canada", "", "", "key_unseen", ""],
        ["A3", "S3", "Apis mellifera", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Apinae", "Apis",
         "Apis mellifera", "", "ACGTACGT", "", "", "", "other_heldout", "3.0"],
    ]
    path = write_table(tmp_path / "BIOSCAN_5M_Insect_Dataset_metadata.csv", header, rows, ",")
    assert detect_kind(path) == "bioscan5m"
    specimens = load_specimens(path, image_root=tmp_path / "BIOSCAN_5M")
    assert [s.split for s in specimens] == ["pretrain", "key_unseen", "other_heldout"]
    assert [s.sequence for s in specimens] == ["ACGTNNACGT", None, "ACGTACGT"]
    assert [s.bin for s in specimens] == ["BOLD:AAB1234", "BOLD:AAB1235", ""]
    root = tmp_path / "BIOSCAN_5M" / "images" / "cropped_256"
    assert [s.image for s in specimens] == [str(root / "pretrain" / "7" / "A1.jpg"),
                                            str(root / "key_unseen" / "A2.jpg"),
                                            str(root / "other_heldout" / "3" / "A3.jpg")]
    assert specimens[0].taxonomy == {"order": "Diptera", "family": "Sciaridae", "genus": "", "species": ""}
    assert all(s.image is None for s in read_bioscan5m(path))


# ---------------------------------------------------------------------------------------------
# Manifests


def test_generic_manifest(tmp_path):
    (tmp_path / "photos").mkdir()
    rows = [["x1", "photos/x1.png", "acgt-acgt", "Diptera", "", "", "", "train", "BOLD:AAA0001"],
            ["x2", "", "", "Diptera", "Sciaridae", "Bradysia", "Bradysia sp1", "val", ""],
            ["x3", str(tmp_path / "abs.jpg"), "ACGT", "NA", "", "", "", "", ""]]
    path = write_table(tmp_path / "manifest.csv",
                      ["ID", "image", "sequence", "order", "family", "genus", "species", "split", "bin"], rows, ",")
    assert detect_kind(path) == "manifest"
    x1, x2, x3 = read_manifest(path)
    assert x1.image == str(tmp_path / "photos" / "x1.png") and x2.image is None
    assert x3.image == str(tmp_path / "abs.jpg")
    assert (x1.sequence, x2.sequence, x3.sequence) == ("ACGTACGT", None, "ACGT")
    assert x3.taxonomy["order"] == "" and x2.taxonomy["species"] == "Bradysia sp1"
    assert (x1.split, x2.split, x3.split) == ("train", "val", "")
    assert (x1.bin, x2.bin) == ("BOLD:AAA0001", "")


def test_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="duplicate id 'a'"):
        read_manifest(write_table(tmp_path / "dup.tsv", ["processid", "species"], [["a", "x"], ["a", "y"]], "\t"))
    with pytest.raises(InputError, match="no id column"):
        read_manifest(write_table(tmp_path / "noid.tsv", ["name", "species"], [["a", "x"]], "\t"))
    with pytest.raises(InputError, match="no such file"):
        load_specimens(tmp_path / "absent.tsv")
    with pytest.raises(InputError, match="unknown data kind"):
        load_specimens(tmp_path / "dup.tsv", kind="fasta")


# ---------------------------------------------------------------------------------------------
# Synthetic TSV + HDF5


def test_synthetic_tsv_and_hdf5_give_the_same_records(simulation):
    from_tsv = {s.id: s for s in load_specimens(simulation / "specimens.tsv")}
    from_hdf5 = load_specimens(simulation / "clibd.hdf5")  # all disjoint split groups
    assert detect_kind(simulation / "clibd.hdf5") == "hdf5"
    assert len(from_hdf5) == len(from_tsv) and {s.id for s in from_hdf5} == set(from_tsv)
    for record in from_hdf5:
        twin = from_tsv[record.id]
        assert record.sequence == twin.sequence and record.sequence and set(record.sequence) <= set("ACGTN")
        assert record.taxonomy == twin.taxonomy
        assert record.split == twin.split
        assert isinstance(record.image, bytes) and record.image == Path(twin.image).read_bytes()
    assert any(not s.taxonomy["species"] for s in from_hdf5 if s.split == "no_split")
    assert {s.split for s in from_hdf5} == set(SPLITS)


def test_simulation_folder_is_accepted(simulation, tmp_path):
    from_folder = load_specimens(simulation)
    assert [s.id for s in from_folder] == [s.id for s in load_specimens(simulation / "specimens.tsv")]
    assert isinstance(load_specimens(simulation, kind="hdf5")[0].image, bytes)
    with pytest.raises(InputError, match="is a folder without"):
        load_specimens(tmp_path)


def test_hdf5_groups_lazy_images_and_errors(simulation):
    path = simulation / "clibd.hdf5"
    keys = read_clibd_hdf5(path, "all_keys")
    assert {s.split for s in keys} == {"all_keys"}
    assert sorted(s.id for s in keys) == sorted(
        s.id for s in read_clibd_hdf5(path, list(KEY_SPLITS)))
    eager = read_clibd_hdf5(path, ["train_seen", "val_unseen"])
    lazy = read_clibd_hdf5(path, ["train_seen", "val_unseen"], lazy_images=True)
    assert [s.id for s in lazy] == [s.id for s in eager]
    assert all(isinstance(s.image, HDF5Image) and s.image.read() == e.image for s, e in zip(lazy, eager, strict=True))
    assert all(s.sampleid.startswith("SYNS-") for s in eager)
    with pytest.raises(InputError, match=r"no group 'seen_val'; groups are: .*train_seen"):
        read_clibd_hdf5(path, ["seen_val"])
    assert len(HDF5_GROUPS) == len(SPLITS) + 1


def test_split_specimens(simulation):
    specimens = load_specimens(simulation / "specimens.tsv")
    train = split_specimens(specimens, "train_seen")
    assert train and all(s.split == "train_seen" for s in train)
    both = split_specimens(specimens, ["val_seen", "test_seen"])
    assert {s.split for s in both} == {"val_seen", "test_seen"}
    with pytest.raises(InputError, match="seen_val"):
        split_specimens(specimens, ["seen_val"])
    assert split_specimens(specimens, ["seen_val"], allow_missing=True) == []


# ---------------------------------------------------------------------------------------------
# Transforms


def test_train_transform_is_random_and_eval_matches_the_runtime(simulation):
    image = load_image(simulation / "images" / "SYN000001.jpg")
    pair = ImageTransforms(SMALL)
    train, evaluate = pair.train, pair.eval
    assert train.training and not evaluate.training and train.spec == evaluate.spec == SMALL
    torch.manual_seed(0)
    outputs = [train(image) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outputs)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])
    expected = torch.from_numpy(preprocess_image(image, SMALL))
    assert torch.equal(evaluate(image), expected) and torch.equal(evaluate(image), expected)
    raw = ImageTransforms(RAW_SMALL).train(image)
    assert raw.min() >= 0.0 and raw.max() <= 1.0


def test_eval_transform_equals_torchvision_on_pil(simulation):
    spec = ImagePreprocessing(size=48, resize=56)
    image = load_image(simulation / "images" / "SYN000002.jpg")
    reference = T.Compose([T.Resize(spec.resize, interpolation=T.InterpolationMode.BICUBIC),
                           T.CenterCrop(spec.size), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    assert torch.equal(ImageTransforms(spec).eval(image), reference(image))


# ---------------------------------------------------------------------------------------------
# Dataset and batches


def test_dataset_and_collate_with_missing_modalities(simulation, text_tokenizer):
    specimens = load_specimens(simulation / "specimens.tsv")[:6]
    specimens[1] = replace(specimens[1], image=None)
    specimens[2] = replace(specimens[2], sequence=None)
    specimens[3] = replace(specimens[3], species="", genus="")
    tokenizer = KmerTokenizer(k=4)
    dataset = SpecimenDataset(specimens, tokenizer, text_tokenizer, ImageTransforms(SMALL).train, text_max_len=20)
    assert dataset[0]["text_input_ids"].shape == (20,)
    loader = DataLoader(dataset, batch_size=6, shuffle=False, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["has_image"].tolist() == [True, False, True, True, True, True]
    assert not batch["pixel_values"][1].any()
    assert batch["dna_input_ids"].shape == batch["dna_attention_mask"].shape == (6, tokenizer.seq_len)
    assert batch["dna_input_ids"].dtype == batch["dna_attention_mask"].dtype == torch.long
    assert batch["has_dna"].tolist() == [True, True, False, True, True, True]
    assert not batch["dna_input_ids"][2].any() and not batch["dna_attention_mask"][2].any()
    ids, mask = tokenizer([specimens[0].sequence])
    assert batch["dna_input_ids"][0].tolist() == ids[0].tolist()
    assert batch["dna_attention_mask"][0].tolist() == mask[0].tolist()
    assert batch["text"][0] == taxonomy_text(specimens[0].taxonomy) == " ".join(
        specimens[0].taxonomy[r] for r in ("order", "family", "genus", "species"))
    assert batch["text"][3].count(" ") == 1  # genus and species dropped
    assert batch["text_input_ids"].shape == batch["text_attention_mask"].shape == (6, 20)
    assert batch["text_attention_mask"][:, 0].all() and not batch["text_attention_mask"][:, -1].any()
    items = [dataset[i] for i in range(6)]
    for item in items:  # batch-wise tokenisation in collate gives the same tokens as per item
        del item["text_input_ids"], item["text_attention_mask"]
    retokenised = collate(items, text_tokenizer, text_max_len=20)
    assert torch.equal(retokenised["text_input_ids"], batch["text_input_ids"])
    assert torch.equal(retokenised["text_attention_mask"], batch["text_attention_mask"])
    maps = dataset.label_maps
    assert batch["species_index"][0] == maps["species"][specimens[0].taxonomy["species"]]
    assert batch["species_index"][3] == -1 and batch["genus_index"][3] == -1
    assert batch["bin_index"].tolist() == [-1] * 6  # the synthetic TSV has no BIN column
    assert batch["index"].tolist() == list(range(6))
    assert batch["processid"] == [s.id for s in specimens]


def test_dataset_from_hdf5_bytes_and_lazy_refs_and_without_images(simulation):
    eager = read_clibd_hdf5(simulation / "clibd.hdf5", "val_seen")
    lazy = read_clibd_hdf5(simulation / "clibd.hdf5", "val_seen", lazy_images=True)
    tokenizer = KmerTokenizer(k=4)
    a = SpecimenDataset(eager, tokenizer, image_transform=ImageTransform(SMALL))
    b = SpecimenDataset(lazy, tokenizer, image_transform=ImageTransform(SMALL))
    for i in range(len(a)):
        assert torch.equal(a[i]["pixel_values"], b[i]["pixel_values"]) and a[i]["has_image"]
    no_images = SpecimenDataset(eager, tokenizer)
    item = no_images[0]
    assert "pixel_values" not in item and item["has_image"] is False and item["has_dna"] is True
    batch = collate([no_images[i] for i in range(len(no_images))])
    assert "text_input_ids" not in batch and batch["has_image"].dtype == torch.bool
    with pytest.raises(TypeError, match=r"\.train or \.eval"):
        SpecimenDataset(eager, tokenizer, image_transform=ImageTransforms(SMALL))


def test_label_maps_carry_over_to_other_splits(simulation):
    specimens = load_specimens(simulation / "specimens.tsv")
    train = split_specimens(specimens, "train_seen")
    unseen = split_specimens(specimens, "test_unseen")
    maps = build_label_maps(train)
    assert set(maps) == {"order", "family", "genus", "species", "bin"}
    assert list(maps["species"]) == sorted(maps["species"]) and list(maps["species"].values()) == list(
        range(len(maps["species"])))
    dataset = SpecimenDataset(unseen, KmerTokenizer(k=4), label_maps=maps)
    assert all(dataset[i]["species_index"] == -1 for i in range(len(dataset)))  # unseen species
    assert all(dataset[i]["order_index"] >= 0 for i in range(len(dataset)))


def test_bad_image_raises_or_is_skipped(simulation, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    specimen = replace(load_specimens(simulation / "specimens.tsv")[0], image=str(broken))
    with pytest.raises(InputError, match=r"broken\.jpg"):
        SpecimenDataset([specimen], KmerTokenizer(k=4), image_transform=ImageTransform(SMALL))[0]
    item = SpecimenDataset([specimen], KmerTokenizer(k=4), image_transform=ImageTransform(SMALL),
                           skip_bad_images=True)[0]
    assert item["has_image"] is False and item["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="image_size"):
        SpecimenDataset([specimen], KmerTokenizer(k=4), image_transform=lambda im: im)
    plain = SpecimenDataset([specimen], KmerTokenizer(k=4), image_transform=lambda im: torch.zeros(3, 8, 8),
                            image_size=8, skip_bad_images=True)
    assert plain[0]["pixel_values"].shape == (3, 8, 8)


def test_taxonomy_text_skips_empty_ranks_and_collapses_spaces():
    cases = [{"order": "Diptera", "family": "Sciaridae", "genus": "Bradysia", "species": "Bradysia  sp1"},
             {"order": "Diptera", "family": "", "genus": " ", "species": "Bradysia sp1"},
             {"order": "Diptera"}, {}]
    assert [taxonomy_text(c) for c in cases] == ["Diptera Sciaridae Bradysia Bradysia sp1",
                                                  "Diptera Bradysia sp1", "Diptera", ""]


def test_specimen_defaults():
    from clibd_training.data import Specimen

    specimen = Specimen("X1")
    assert specimen.image is None and specimen.sequence is None and specimen.text == ""
    assert specimen.taxonomy == {"order": "", "family": "", "genus": "", "species": ""}
    assert np.array_equal(SpecimenDataset([specimen], KmerTokenizer(k=4))[0]["dna_input_ids"].numpy(),
                          np.zeros(KmerTokenizer(k=4).seq_len))
