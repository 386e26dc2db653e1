"""Synthetic insect specimens (photo + COI barcode + taxonomy) for testing CLIBD end to end.

Real BIOSCAN data is large, slow to download and cannot ship with the repository, yet every stage of
CLIBD (data loading, contrastive training, index building, evaluation on seen/unseen species) needs
data with the *structure* of the real thing: a taxonomic tree, barcodes whose distances follow that
tree, and images whose appearance follows it too.  This module fakes exactly that structure, so a
pipeline that cannot learn from it is broken, and one that learns from it is at least wired correctly.

* The taxonomy is a seeded tree: orders (-ptera) → families (-idae) → genera → 1-6 species each.
* Barcodes are evolved down the tree from an AT-rich ~658 bp COI-like root, mostly by transitions at
  third codon positions (site-rate heterogeneity, no in-frame stop codons), so p-distance grows with
  taxonomic distance like in real insect COI; specimens carry 0-1.5 % private mutations, a few Ns and
  sometimes trimmed ends, like real BOLD records.
* Photos are rendered with PIL from traits inherited down the same tree: the order fixes the body
  plan, the family the palette, the genus the pattern, the species a variant of pattern and colours;
  pose, scale, position, lighting and background noise vary per specimen.
* Records are split by :func:`clibd_cli.split.clibd_split`, the CLIBD split of `clibd split` (unseen
  species chosen in genera that keep a seen species), and written as a TSV, JPEG files and the CLIBD HDF5
  layout.  Each record is a :class:`clibd_cli.schema.Specimen` that knows how to draw its photo.

Everything is deterministic per seed and torch-free (numpy + pillow; h5py only when writing HDF5).
"""

from __future__ import annotations

import colorsys
import csv
import io
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from clibd_cli.schema import KEY_SPLITS, RANKS, SEEN_SPLITS, UNSEEN_SPLITS, Specimen
from clibd_cli.split import clibd_split
from clibd_cli.workflow import Progress, no_progress

TSV_COLUMNS: tuple[str, ...] = ("processid", "image_file", "nucleotides", *RANKS, "split")
SPLITS: tuple[str, ...] = (*SEEN_SPLITS, *UNSEEN_SPLITS, "no_split")  # the splits a simulation fills
HDF5_GROUPS: tuple[str, ...] = (*SPLITS, "all_keys")
HDF5_STRING_FIELDS: tuple[str, ...] = ("barcode", "order", "family", "genus", "species", "sampleid",
                                       "processid", "image_file")

BARCODE_LENGTH = 658
# Fraction of sites changed on each branch, from the parent node (ranges drawn uniformly per node).
BRANCH_DIVERGENCE: dict[str, tuple[float, float]] = {
    "order": (0.15, 0.20), "family": (0.08, 0.12), "genus": (0.06, 0.08), "species": (0.03, 0.05)}
SPECIMEN_DIVERGENCE_MAX = 0.015
UNSEEN_SPECIES_FRACTION = 0.2
NO_SPLIT_FRACTION = 0.05
MIN_SPECIES = 5


# ---------------------------------------------------------------------------------------------
# Random streams


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator per purpose, so changing e.g. the renderer never changes barcodes."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


# ---------------------------------------------------------------------------------------------
# Taxonomy


@dataclass(frozen=True)
class SpeciesNode:
    """One leaf of the tree: its names and the indices of its ancestors (for inheriting traits)."""

    index: int
    order: str
    family: str
    genus: str
    species: str
    order_index: int
    family_index: int
    genus_index: int

    @property
    def bin_uri(self) -> str:
        """A made-up BOLD BIN (`BOLD:SYN0042`), one per species, shaped like real BIN URIs."""
        return f"BOLD:SYN{self.index:04d}"


_ONSETS = ("b", "c", "d", "g", "l", "m", "n", "p", "r", "s", "t", "v", "x", "z", "ch", "ph", "th",
           "tr", "cr", "pl", "st", "sc", "br", "dr", "gl")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ae", "y")
_CODAS = ("l", "n", "r", "t", "c", "d", "m", "s")
_GENUS_ENDINGS = ("us", "a", "ia", "ella", "ops", "oides", "ius", "omyia", "ura", "odes", "ina", "ocera")
_EPITHET_ENDINGS = ("us", "a", "is", "ensis", "ii", "ata", "icus", "ella", "oides", "ana", "ipes", "alis")


def _stem(rng: np.random.Generator, low: int, high: int) -> str:
    """Two or three Latin-looking syllables, ending in a vowel."""
    count = int(rng.integers(low, high + 1))
    return "".join(str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(count))


def _join(stem: str, suffix: str, rng: np.random.Generator) -> str:
    """Glue a suffix on with a consonant when both would meet as vowels (`Bali` + `idae` → `Balinidae`)."""
    if suffix[0] in "aeiouy":
        stem += str(rng.choice(_CODAS))
    return stem + suffix


def _order_name(rng: np.random.Generator) -> str:
    return (_stem(rng, 2, 2)[:-1] + str(rng.choice(("o", "i", "e", "o"))) + "ptera").capitalize()


def _family_name(rng: np.random.Generator) -> str:
    return _join(_stem(rng, 2, 3), "idae", rng).capitalize()


def _genus_name(rng: np.random.Generator) -> str:
    return _join(_stem(rng, 1, 2), str(rng.choice(_GENUS_ENDINGS)), rng).capitalize()


def _epithet(rng: np.random.Generator) -> str:
    return _join(_stem(rng, 1, 2), str(rng.choice(_EPITHET_ENDINGS)), rng)


def _unique(make: Callable[[np.random.Generator], str], rng: np.random.Generator, used: set[str]) -> str:
    """Draw names until one is new: homonyms would silently merge taxa downstream."""
    while True:
        name = make(rng)
        if name not in used and len(name) >= 4:
            used.add(name)
            return name


def _partition(rng: np.random.Generator, n_items: int, n_groups: int) -> list[int]:
    """Split `n_items` into `n_groups` non-empty, roughly even but random group sizes."""
    n_groups = max(1, min(n_groups, n_items))
    extra = rng.multinomial(n_items - n_groups, np.full(n_groups, 1 / n_groups))
    return [1 + int(e) for e in extra]


def _genus_sizes(rng: np.random.Generator, n_species: int) -> list[int]:
    """Species per genus, 1-6, skewed to small genera as in real faunas; sums to `n_species`."""
    sizes: list[int] = []
    while sum(sizes) < n_species:
        sizes.append(int(rng.choice(np.arange(1, 7), p=[0.2, 0.27, 0.21, 0.14, 0.1, 0.08])))
    sizes[-1] -= sum(sizes) - n_species
    return sizes


def make_taxonomy(n_species: int = 60, seed: int = 0) -> list[SpeciesNode]:
    """A seeded tree of `n_species` species: a few orders, several families, several genera each."""
    if n_species < 1:
        raise ValueError(f"n_species must be at least 1, got {n_species}")
    rng = _rng(seed, "taxonomy")
    genus_sizes = _genus_sizes(rng, n_species)
    family_sizes = _partition(rng, len(genus_sizes), max(1, round(len(genus_sizes) / 3)))
    n_orders = min(len(family_sizes), max(2, round(len(family_sizes) / 2.5)))
    order_sizes = _partition(rng, len(family_sizes), n_orders)
    order_of_family = np.repeat(np.arange(len(order_sizes)), order_sizes)
    family_of_genus = np.repeat(np.arange(len(family_sizes)), family_sizes)
    used: set[str] = set()
    orders = [_unique(_order_name, rng, used) for _ in order_sizes]
    families = [_unique(_family_name, rng, used) for _ in family_sizes]
    genera = [_unique(_genus_name, rng, used) for _ in genus_sizes]
    nodes: list[SpeciesNode] = []
    for g, size in enumerate(genus_sizes):
        epithets: set[str] = set()
        f = int(family_of_genus[g])
        o = int(order_of_family[f])
        for _ in range(size):
            name = f"{genera[g]} {_unique(_epithet, rng, epithets)}"
            nodes.append(SpeciesNode(len(nodes), orders[o], families[f], genera[g], name, o, f, g))
    return nodes


# ---------------------------------------------------------------------------------------------
# Barcodes

_BASES = np.array(list("ACGT"))
# Equilibrium composition (A, C, G, T) per codon position, after insect COI: 3rd positions are
# ~90 % A+T, 2nd positions T-rich (hydrophobic membrane protein); overall ~68 % A+T.
_COMPOSITION = np.array([[0.30, 0.16, 0.25, 0.29],
                         [0.18, 0.24, 0.15, 0.43],
                         [0.45, 0.07, 0.03, 0.45]])
_PARTNER = np.array([2, 3, 0, 1])  # transition partner: A<->G, C<->T
_KAPPA = np.array([5.0, 5.0, 20.0])  # transition/transversion bias per codon position
_CODON_RATE = np.array([0.15, 0.04, 1.0])  # relative substitution rate per codon position
# HKY-like jump rates [codon position, from, to]: π(to) × κ for transitions, π(to) for transversions.
_IS_TRANSITION = np.arange(4)[None, :] == _PARTNER[:, None]
_JUMP = _COMPOSITION[:, None, :] * np.where(_IS_TRANSITION, _KAPPA[:, None, None], 1.0)
_JUMP[:, np.arange(4), np.arange(4)] = 0.0
_EXIT = _JUMP.sum(axis=2)  # total rate of leaving each base: G/C sites mutate faster, keeping A+T high


def site_rates(seed: int = 0, length: int = BARCODE_LENGTH) -> np.ndarray:
    """Per-site rates shared by the whole tree: fast 3rd positions, gamma-distributed heterogeneity."""
    return _CODON_RATE[np.arange(length) % 3] * _rng(seed, "site-rates").gamma(0.8, 1 / 0.8, length)


def _stop_codons(seq: np.ndarray) -> np.ndarray:
    """Indices of in-frame TAA/TAG codons (the stops of the invertebrate mitochondrial code)."""
    codons = seq[: len(seq) // 3 * 3].reshape(-1, 3)
    return np.flatnonzero((codons[:, 0] == 3) & (codons[:, 1] == 0) & (codons[:, 2] % 2 == 0))


def _root_sequence(rng: np.random.Generator, length: int = BARCODE_LENGTH) -> np.ndarray:
    """An AT-rich open reading frame: a real COI barcode has no stop codon."""
    positions = np.arange(length) % 3
    seq = np.zeros(length, dtype=np.uint8)
    for p in range(3):
        seq[positions == p] = rng.choice(4, size=int((positions == p).sum()), p=_COMPOSITION[p])
    while len(stops := _stop_codons(seq)):
        for codon in stops:
            for offset in range(3):
                seq[3 * codon + offset] = rng.choice(4, p=_COMPOSITION[offset])
    return seq


def _mutate(parent: np.ndarray, divergence: float, rates: np.ndarray, rng: np.random.Generator,
            ) -> np.ndarray:
    """Change ~`divergence` of the sites, chosen by rate, mostly by transitions (HKY-like jumps).

    Mutations that would create an in-frame stop codon are undone, as selection would remove them.
    """
    count = int(rng.binomial(len(parent), divergence))
    child = parent.copy()
    if count == 0:
        return child
    site_weight = rates * _EXIT[np.arange(len(parent)) % 3, parent]
    sites = rng.choice(len(parent), size=count, replace=False, p=site_weight / site_weight.sum())
    weights = _JUMP[sites % 3, parent[sites]]
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    child[sites] = np.minimum((cumulative < rng.random((count, 1))).sum(axis=1), 3)
    for codon in _stop_codons(child):
        child[3 * codon: 3 * codon + 3] = parent[3 * codon: 3 * codon + 3]
    return child


def evolve_haplotypes(taxonomy: Sequence[SpeciesNode], seed: int = 0) -> list[np.ndarray]:
    """One ancestral barcode (as 0-3 codes) per species, evolved root → order → family → genus → species."""
    rng = _rng(seed, "barcodes")
    rates = site_rates(seed)
    root = _root_sequence(rng)

    def branch(parent: np.ndarray, rank: str) -> np.ndarray:
        return _mutate(parent, float(rng.uniform(*BRANCH_DIVERGENCE[rank])), rates, rng)

    orders: dict[int, np.ndarray] = {}
    families: dict[int, np.ndarray] = {}
    genera: dict[int, np.ndarray] = {}
    haplotypes = []
    for node in taxonomy:
        if node.order_index not in orders:
            orders[node.order_index] = branch(root, "order")
        if node.family_index not in families:
            families[node.family_index] = branch(orders[node.order_index], "family")
        if node.genus_index not in genera:
            genera[node.genus_index] = branch(families[node.family_index], "genus")
        haplotypes.append(branch(genera[node.genus_index], "species"))
    return haplotypes


def _specimen_barcode(haplotype: np.ndarray, rates: np.ndarray, rng: np.random.Generator) -> str:
    """A specimen's read: private mutations, then sequencing artefacts (internal Ns, trimmed ends)."""
    seq = _mutate(haplotype, SPECIMEN_DIVERGENCE_MAX * float(rng.random()) ** 2, rates, rng)
    letters = _BASES[seq].copy()
    if rng.random() < 0.05:
        letters[rng.integers(20, len(letters) - 20, size=int(rng.integers(1, 7)))] = "N"
    text = "".join(letters)
    if rng.random() < 0.06:
        start = int(rng.integers(0, 120))
        end = len(text) - int(rng.integers(0, 90))
        text = text[start:end]
    return text


# ---------------------------------------------------------------------------------------------
# Looks: traits inherited down the tree

RGB = tuple[int, int, int]
WING_TYPES: tuple[str, ...] = ("membrane", "scaled", "elytra", "tegmina", "none")
ANTENNA_TYPES: tuple[str, ...] = ("straight", "clubbed", "elbowed", "feathery")
PATTERN_KINDS: tuple[str, ...] = ("bands", "spots", "stripe", "eyespots", "chevrons")


@dataclass(frozen=True)
class BodyPlan:
    """Shape shared by an order; lengths are fractions of the canvas side."""

    segments: int
    body_length: float
    body_width: float
    head_size: float
    wing: str
    wing_length: float
    wing_width: float
    leg_pairs: int
    leg_length: float
    antenna: str
    antenna_length: float


@dataclass(frozen=True)
class Palette:
    """Colours shared by a family."""

    body: RGB
    wing: RGB
    accent: RGB
    leg: RGB


@dataclass(frozen=True)
class Pattern:
    """Markings: kind shared by a genus, count/size/colour varied per species."""

    kind: str
    count: int
    size: float
    colour: RGB


@dataclass(frozen=True)
class Look:
    """Everything the renderer needs to draw one species."""

    plan: BodyPlan
    palette: Palette
    pattern: Pattern


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _body_plan(rng: np.random.Generator, wing: str, antenna: str) -> BodyPlan:
    """Body proportions follow the wing type, as they do across real orders (beetles are stout…)."""
    stout = wing in ("elytra", "none")
    return BodyPlan(
        segments=int(rng.integers(3, 9)),
        body_length=float(rng.uniform(0.5, 0.58) if stout else rng.uniform(0.55, 0.68)),
        body_width=float(rng.uniform(0.13, 0.17) if stout else rng.uniform(0.07, 0.11)),
        head_size=float(rng.uniform(0.035, 0.055)),
        wing=wing,
        wing_length=float(rng.uniform(0.3, 0.38) if wing == "scaled" else rng.uniform(0.26, 0.34)),
        wing_width=float(rng.uniform(0.18, 0.24) if wing == "scaled" else rng.uniform(0.07, 0.11)),
        leg_pairs=3 if rng.random() < 0.75 else 2,
        leg_length=float(rng.uniform(0.12, 0.24)),
        antenna=antenna,
        antenna_length=float(rng.uniform(0.08, 0.18)),
    )


def _palette(rng: np.random.Generator, hue: float) -> Palette:
    body_value = rng.uniform(0.3, 0.75)
    return Palette(
        body=_hsv(hue, rng.uniform(0.45, 0.9), body_value),
        wing=_hsv(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.35, 0.85), rng.uniform(0.55, 0.95)),
        accent=_hsv(hue + rng.uniform(0.35, 0.65), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)),
        leg=_hsv(hue, rng.uniform(0.3, 0.7), body_value * 0.6),
    )


def _shift(rgb: RGB, hue: float, value: float = 1.0) -> RGB:
    """Rotate a colour's hue and scale its value: how sister species differ in colour."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return _hsv(h + hue, s, v * value)


def design_looks(taxonomy: Sequence[SpeciesNode], seed: int = 0) -> list[Look]:
    """One :class:`Look` per species.

    Order → body plan, family → palette, genus → pattern kind, species → variant of pattern and colours:
    so image similarity, like barcode similarity, follows the tree.
    """
    rng = _rng(seed, "looks")
    wing_cycle = [WING_TYPES[i] for i in rng.permutation(len(WING_TYPES))]
    antenna_cycle = [ANTENNA_TYPES[i] for i in rng.permutation(len(ANTENNA_TYPES))]
    hue0 = float(rng.random())
    plans: dict[int, BodyPlan] = {}
    palettes: dict[int, Palette] = {}
    genus_patterns: dict[int, Pattern] = {}
    family_kinds: dict[int, list[str]] = {}
    genera_in_family: dict[int, int] = {}
    sisters: dict[int, int] = {}
    looks = []
    for node in taxonomy:
        o, f, g = node.order_index, node.family_index, node.genus_index
        if o not in plans:
            plans[o] = _body_plan(rng, wing_cycle[o % len(wing_cycle)], antenna_cycle[o % len(antenna_cycle)])
        if f not in palettes:
            # Golden-ratio hue steps keep families far apart on the colour wheel.
            palettes[f] = _palette(rng, hue0 + 0.618034 * f)
            family_kinds[f] = [PATTERN_KINDS[i] for i in rng.permutation(len(PATTERN_KINDS))]
        if g not in genus_patterns:
            # Sister genera take different pattern kinds: the genus is what the pattern tells apart.
            kinds = family_kinds[f]
            kind = kinds[genera_in_family.get(f, 0) % len(kinds)]
            genera_in_family[f] = genera_in_family.get(f, 0) + 1
            genus_patterns[g] = Pattern(kind, int(rng.integers(2, 6)), float(rng.uniform(0.6, 1.0)),
                                        _shift(palettes[f].accent, float(rng.uniform(-0.08, 0.08))))
        k = sisters.get(g, 0)
        sisters[g] = k + 1
        looks.append(_species_variant(rng, plans[o], palettes[f], genus_patterns[g], k))
    return looks


def _species_variant(rng: np.random.Generator, plan: BodyPlan, palette: Palette, pattern: Pattern,
                     sister: int) -> Look:
    """Species `sister` of a genus: its own accent hue step, pattern count/size and colour shades."""
    hue_step = 0.11 * ((sister + 1) // 2) * (1 if sister % 2 else -1) if sister else 0.0
    variant = Pattern(pattern.kind, max(1, pattern.count + int(rng.integers(-1, 2)) + sister % 2),
                      pattern.size * float(rng.uniform(0.8, 1.25)),
                      _shift(pattern.colour, hue_step + float(rng.uniform(-0.02, 0.02))))
    colours = Palette(_shift(palette.body, float(rng.uniform(-0.04, 0.04)), float(rng.uniform(0.8, 1.2))),
                      _shift(palette.wing, float(rng.uniform(-0.05, 0.05)), float(rng.uniform(0.9, 1.1))),
                      palette.accent, palette.leg)
    return Look(plan, colours, variant)


# ---------------------------------------------------------------------------------------------
# Rendering

Box = tuple[float, float, float, float]


def _jitter(rgb: RGB, rng: np.random.Generator, amount: float = 10.0) -> tuple[int, int, int, int]:
    """Specimen-to-specimen colour variation (and an opaque alpha for RGBA drawing)."""
    r, g, b = (int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in rgb)
    return (r, g, b, 255)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 40,
             ) -> list[tuple[float, float]]:
    """Polygon of a rotated ellipse (PIL only draws axis-aligned ones)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + ca * a - sa * b, cy + sa * a + ca * b) for a, b in zip(x, y, strict=True)]


def _bbox(points: Sequence[tuple[float, float]]) -> Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: Pattern, box: Box, dark: tuple[int, ...]) -> None:
    """Markings inside `box`; the caller clips them to the body part's silhouette."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    colour = (*pattern.colour, 255)
    n = pattern.count
    if pattern.kind == "bands":
        for i in range(n):
            yc = y0 + (i + 0.5) * h / n
            half = 0.22 * pattern.size * h / n
            draw.rectangle((x0, yc - half, x1, yc + half), fill=colour)
    elif pattern.kind == "spots":
        r = 0.11 * pattern.size * min(w, h * 0.8)
        for i in range(n):
            yc = y0 + (i + 0.5) * h / n
            for xc in (x0 + 0.3 * w, x1 - 0.3 * w):
                draw.ellipse((xc - r, yc - r, xc + r, yc + r), fill=colour)
    elif pattern.kind == "stripe":
        half = 0.09 * pattern.size * w
        centres = [cx] if n % 2 else []
        centres += [c for i in range(n // 2) for c in (cx - (i + 1) * 0.22 * w, cx + (i + 1) * 0.22 * w)]
        for xc in centres[:5]:
            draw.rectangle((xc - half, y0, xc + half, y1), fill=colour)
    elif pattern.kind == "eyespots":
        r = 0.2 * pattern.size * min(w, h)
        for i in range(max(1, n // 2)):
            yc = y0 + (i + 0.5) * h / max(1, n // 2)
            draw.ellipse((cx - r, yc - r, cx + r, yc + r), fill=colour)
            draw.ellipse((cx - 0.6 * r, yc - 0.6 * r, cx + 0.6 * r, yc + 0.6 * r), fill=dark)
            glint = (cx - 0.2 * r, yc - 0.35 * r, cx + 0.1 * r, yc - 0.05 * r)
            draw.ellipse(glint, fill=(250, 250, 240, 255))
    elif pattern.kind == "chevrons":
        width = max(1, round(0.12 * pattern.size * h / n))
        for i in range(n):
            yc = y0 + (i + 0.3) * h / n
            draw.line([(x0, yc), (cx, yc + 0.5 * h / n), (x1, yc)], fill=colour, width=width)


def _clipped(pattern: Image.Image, mask: Image.Image) -> Image.Image:
    """The pattern layer restricted to a silhouette mask."""
    alpha = ImageChops.multiply(pattern.getchannel("A"), mask)
    pattern.putalpha(alpha)
    return pattern


def _side_part(size: int, shapes: list[list[tuple[float, float]]], fill: tuple[int, ...],
               pattern: Pattern | None, dark: tuple[int, ...], outline: tuple[int, ...]) -> Image.Image:
    """One side's wing or elytron with its clipped markings and outline, on its own layer."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    union = Image.new("L", (size, size), 0)
    width = max(1, size // 200)
    for shape in shapes:  # back to front: each shape hides the outline of the one beneath
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).polygon(shape, fill=255)
        part = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        draw = ImageDraw.Draw(part)
        draw.polygon(shape, fill=fill)
        if pattern is not None:
            marks = Image.new("RGBA", (size, size), (0, 0, 0, 0))
            _draw_pattern(ImageDraw.Draw(marks), pattern, _bbox(shape), dark)
            part.alpha_composite(_clipped(marks, mask))
        draw.line([*shape, shape[0]], fill=outline, width=width)
        layer.alpha_composite(part)
        union = ImageChops.lighter(union, mask)
    if fill[3] < 255:  # translucent membrane: the body and legs show through
        layer.putalpha(ImageChops.multiply(layer.getchannel("A"), union.point(lambda v: v * fill[3] // 255)))
    return layer


def _mirrored(layer: Image.Image) -> Image.Image:
    """Bilateral symmetry: a right-side layer composited with its mirror image."""
    both = layer.copy()
    both.alpha_composite(ImageOps.mirror(layer))
    return both


@dataclass(frozen=True)
class _Frame:
    """Canonical geometry of one drawing (head up, body on the vertical midline), in pixels."""

    size: int
    cx: float
    head: tuple[float, float, float]
    thorax: Box
    abdomen: Box


def _frame(plan: BodyPlan, size: int) -> _Frame:
    cx = (size - 1) / 2
    length = plan.body_length * size
    top = size / 2 - length / 2 + 0.03 * size
    r = plan.head_size * size
    half = plan.body_width * size / 2
    thorax = (cx - 0.85 * half, top + 1.7 * r, cx + 0.85 * half, top + 1.7 * r + 0.22 * length)
    abdomen = (cx - half, thorax[3] - 0.03 * length, cx + half, top + length)
    return _Frame(size, cx, (cx, top + r, r), thorax, abdomen)


def _step(start: tuple[float, float], length: float, angle: float) -> tuple[float, float]:
    return (start[0] + length * math.cos(angle), start[1] + length * math.sin(angle))


def _legs_and_antennae(look: Look, fr: _Frame, rng: np.random.Generator) -> Image.Image:
    """Right-side legs and antenna (mirrored by the caller)."""
    plan = look.plan
    layer = Image.new("RGBA", (fr.size, fr.size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    colour = _jitter(look.palette.leg, rng, 6)
    width = max(1, round(fr.size * 0.008))
    x_edge = fr.thorax[2] - 0.2 * (fr.thorax[2] - fr.cx)
    length = plan.leg_length * fr.size
    for i in range(plan.leg_pairs):
        y = fr.thorax[1] + (i + 0.7) * (fr.thorax[3] - fr.thorax[1]) / (plan.leg_pairs + 0.4)
        base_angle = math.radians(-35 + 55 * i + rng.normal(0, 6))  # front legs forward, hind legs back
        knee = _step((x_edge, y), 0.45 * length, base_angle)
        foot = _step(knee, 0.6 * length, base_angle + math.radians(35 + rng.normal(0, 6)))
        draw.line([(x_edge, y), knee, foot], fill=colour, width=width, joint="curve")
    hx, hy, hr = fr.head
    base = (hx + 0.4 * hr, hy - 0.8 * hr)
    angle = math.radians(-60 + rng.normal(0, 5))
    length = plan.antenna_length * fr.size
    tip = _step(base, length, angle)
    if plan.antenna == "elbowed":
        elbow = _step(base, 0.45 * length, angle - 0.5)
        tip = _step(elbow, 0.6 * length, angle + 0.6)
        draw.line([base, elbow, tip], fill=colour, width=width, joint="curve")
    else:
        draw.line([base, tip], fill=colour, width=width)
    if plan.antenna == "clubbed":
        r = 2.2 * width
        draw.ellipse((tip[0] - r, tip[1] - r, tip[0] + r, tip[1] + r), fill=colour)
    elif plan.antenna == "feathery":
        for t in np.linspace(0.25, 1.0, 7):
            px, py = base[0] + t * (tip[0] - base[0]), base[1] + t * (tip[1] - base[1])
            barb = (px + 0.12 * length, py + 0.05 * length)
            draw.line([(px, py), barb], fill=colour, width=max(1, width // 2))
    return layer


def _wings(look: Look, fr: _Frame, rng: np.random.Generator, over: bool) -> Image.Image | None:
    """Right-side wings: under the body (membrane, scaled) or covering it (elytra, tegmina)."""
    plan, size = look.plan, fr.size
    lying_over = plan.wing in ("elytra", "tegmina")
    if plan.wing == "none" or lying_over != over:
        return None
    dark = _jitter(tuple(c // 4 for c in look.palette.body), rng, 3)
    length, width = plan.wing_length * size, plan.wing_width * size
    root_y = (fr.thorax[1] + fr.thorax[3]) / 2
    pattern: Pattern | None = look.pattern
    if plan.wing == "membrane":
        a1, a2 = math.radians(25 + rng.normal(0, 4)), math.radians(50 + rng.normal(0, 4))
        shapes = [_ellipse(fr.cx + 0.5 * length * math.cos(a), root_y + 0.5 * length * math.sin(a),
                           0.5 * length * k, 0.5 * width * k, a) for a, k in ((a1, 1.0), (a2, 0.8))]
        fill, pattern = (*_jitter(look.palette.wing, rng, 6)[:3], 110), None
    elif plan.wing == "scaled":
        a1, a2 = math.radians(-20 + rng.normal(0, 4)), math.radians(35 + rng.normal(0, 4))
        shapes = [_ellipse(fr.cx + 0.5 * length * math.cos(a), root_y + 0.5 * length * math.sin(a),
                           0.5 * length * k, 0.5 * width * k, a) for a, k in ((a2, 0.85), (a1, 1.0))]
        fill = _jitter(look.palette.wing, rng, 8)
    elif plan.wing == "elytra":
        x0, y0, x1, y1 = fr.abdomen
        shapes = [_ellipse(fr.cx + 0.25 * (x1 - x0), (y0 + y1) / 2 - 0.03 * size, 0.3 * (x1 - x0),
                           0.52 * (y1 - y0), 0.0)]
        fill = _jitter(look.palette.wing, rng, 8)
    else:  # tegmina: long narrow forewings folded along the body
        angle = math.radians(78 + rng.normal(0, 2))
        reach = 0.95 * (fr.abdomen[3] - root_y)
        shapes = [_ellipse(fr.cx + 0.5 * reach * math.cos(angle), root_y + 0.5 * reach * math.sin(angle),
                           0.5 * reach, 0.28 * width, angle)]
        fill = (*_jitter(look.palette.wing, rng, 8)[:3], 235)
    return _side_part(size, shapes, fill, pattern, dark, dark)


def _body(look: Look, fr: _Frame, rng: np.random.Generator) -> Image.Image:
    """Abdomen segments, thorax, head with eyes, body markings and a specular highlight."""
    plan, size = look.plan, fr.size
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    body = _jitter(look.palette.body, rng)
    dark = _jitter(tuple(c // 3 for c in look.palette.body), rng, 3)
    x0, y0, x1, y1 = fr.abdomen
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    seg_h = (y1 - y0) / plan.segments
    for i in range(plan.segments):
        taper = 1.0 - 0.6 * max(0.0, (i + 1) / plan.segments - 0.45) ** 1.3
        half = (x1 - x0) / 2 * taper
        box = (fr.cx - half, y0 + i * seg_h - 0.25 * seg_h, fr.cx + half, y0 + (i + 1) * seg_h + 0.25 * seg_h)
        draw.ellipse(box, fill=body, outline=dark, width=max(1, size // 250))
        mask_draw.ellipse(box, fill=255)
    if plan.wing != "elytra":  # elytra carry the markings themselves
        marks = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        _draw_pattern(ImageDraw.Draw(marks), look.pattern, fr.abdomen, dark)
        layer.alpha_composite(_clipped(marks, mask))
    draw.ellipse(fr.thorax, fill=body, outline=dark, width=max(1, size // 250))
    hx, hy, hr = fr.head
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=body, outline=dark)
    eye = 0.45 * hr
    for ex in (hx - 0.65 * hr, hx + 0.65 * hr):
        draw.ellipse((ex - eye, hy - 0.2 * hr - eye, ex + eye, hy - 0.2 * hr + eye), fill=dark)
    highlight = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(highlight).ellipse((fr.cx - 0.12 * (x1 - x0), fr.thorax[1], fr.cx + 0.12 * (x1 - x0),
                                       y1 - 0.2 * (y1 - y0)), fill=(255, 255, 255, 45))
    layer.alpha_composite(highlight)
    return layer


def render_insect(look: Look, size: int, rng: np.random.Generator) -> Image.Image:
    """The insect alone, head up, on a transparent RGBA canvas of side `size`."""
    fr = _frame(look.plan, size)
    canvas = _mirrored(_legs_and_antennae(look, fr, rng))
    under = _wings(look, fr, rng, over=False)
    if under is not None:
        canvas.alpha_composite(_mirrored(under))
    canvas.alpha_composite(_body(look, fr, rng))
    over = _wings(look, fr, rng, over=True)
    if over is not None:
        canvas.alpha_composite(_mirrored(over))
    return canvas


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A light specimen-plate background with a lighting gradient (smooth, so drawn small and upscaled)."""
    small = 16
    base = np.array([226.0, 223.0, 214.0]) + rng.normal(0, 6) + rng.normal(0, 2, 3)
    yy, xx = (np.mgrid[0:small, 0:small] + 0.5) / small
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) * rng.uniform(10, 30)
    pixels = np.clip(base[None, None, :] + gradient[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").resize((size, size), Image.Resampling.BILINEAR)


def _posed(insect: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The insect cropped to its silhouette, rotated to a random heading and rescaled."""
    insect = insect.crop(insect.getbbox())  # rotating only the occupied pixels is several times faster
    insect = insect.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BICUBIC, expand=True)
    scale = rng.uniform(0.78, 1.05)
    return insect.resize((max(2, round(insect.width * scale)), max(2, round(insect.height * scale))),
                         Image.Resampling.BILINEAR)


def photograph(look: Look, image_size: int, rng: np.random.Generator) -> Image.Image:
    """A photo of one specimen: random pose, scale, position, shadow, lighting and sensor noise."""
    work = 2 * image_size  # supersample, then downscale: smooth edges without antialiased drawing
    insect = _posed(render_insect(look, work, rng), rng)
    shift = rng.uniform(-0.08, 0.08, 2) * work
    left, top = (round((work - side) / 2 + offset) for side, offset in zip(insect.size, shift, strict=True))
    photo = _background(work, rng)
    shadow = Image.new("L", (work, work), 0)
    shadow.paste(insect.getchannel("A"), (left + work // 80, top + work // 80))
    shadow = shadow.filter(ImageFilter.BoxBlur(work // 60)).point(lambda v: v * 3 // 10)
    photo = Image.composite(Image.new("RGB", (work, work), (0, 0, 0)), photo, shadow)
    photo.paste(insect, (left, top), insect)
    pixels = np.asarray(photo.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.85, 1.15) + mean * rng.uniform(0.85, 1.1)
    pixels += rng.normal(0, rng.uniform(2, 6), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG encoding used for both the image files and the HDF5 `image` rows (so they are identical)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Specimens and splits


@dataclass(frozen=True)
class SimulatedSpecimen(Specimen):
    """A synthetic record (:class:`~clibd_cli.schema.Specimen`: id, ranks, BIN, barcode, photo file, split,
    sample id) that draws its photo on demand with :meth:`render` (deterministic per specimen)."""

    look: Look | None = field(default=None, repr=False, compare=False)
    image_seed: int = field(default=0, repr=False)
    image_size: int = field(default=224, repr=False)

    def render(self, image_size: int | None = None) -> Image.Image:
        """The specimen's photo; the same seed gives the same photo at a given size."""
        if self.look is None:
            raise ValueError(f"{self.id}: no look attached; build specimens with simulate()")
        return photograph(self.look, image_size or self.image_size, np.random.default_rng(self.image_seed))

    def jpeg(self, quality: int = 90) -> bytes:
        """The photo as JPEG bytes, exactly as written to `image_file` and the HDF5 `image` row."""
        return jpeg_bytes(self.render(), quality)

    def row(self) -> dict[str, str]:
        """The TSV row (columns :data:`TSV_COLUMNS`)."""
        return {"processid": self.id, "image_file": self.image, "nucleotides": self.sequence or "",
                **self.taxonomy, "split": self.split}


def _choose_unseen(rng: np.random.Generator, taxonomy: Sequence[SpeciesNode], count: int) -> set[int]:
    """Unseen species, preferring genera that keep a seen species (CLIBD evaluates their genus)."""
    seen_in_genus: dict[int, int] = {}
    for node in taxonomy:
        seen_in_genus[node.genus_index] = seen_in_genus.get(node.genus_index, 0) + 1
    unseen: set[int] = set()
    order = rng.permutation(len(taxonomy))
    for i in order:
        node = taxonomy[int(i)]
        if len(unseen) < count and seen_in_genus[node.genus_index] > 1:
            unseen.add(node.index)
            seen_in_genus[node.genus_index] -= 1
    for i in order:  # a tree of mostly single-species genera: take any species
        if len(unseen) < count:
            unseen.add(int(i))
    return unseen


def _choose_unlabelled(rng: np.random.Generator, groups: Sequence[Sequence[int]], count: int) -> set[int]:
    """Records to strip of their species label; each species keeps ≥ 2/3 of its records (≥ 2)."""
    allowed = {i: max(0, (len(group) - 2) // 3) for i, group in enumerate(groups)}
    pool = [(i, record) for i, group in enumerate(groups) for record in group]
    chosen: set[int] = set()
    for j in rng.permutation(len(pool)):
        i, record = pool[int(j)]
        if len(chosen) < count and allowed[i] > 0:
            chosen.add(record)
            allowed[i] -= 1
    return chosen


def assign_splits(species_of_record: Sequence[int], taxonomy: Sequence[SpeciesNode], seed: int = 0,
                  ) -> tuple[list[str], list[bool]]:
    """CLIBD splits per record, and which records lose their species label (the `no_split` ones).

    The simulation decides what real data would already have: which 20 % of species are unseen (preferring
    genera that keep a seen species, so their genus can be evaluated) and which ~5 % of records, taken from
    seen species that keep enough records, have no species label.  The records are then split by
    :func:`clibd_cli.split.clibd_split` exactly as `clibd split` splits a real table: seen species ~70/10/10/10
    → train_seen/val_seen/test_seen/seen_keys (at least one training record and one key each), unseen
    species divided between validation and test, each species' records half queries, half keys.
    """
    rng = _rng(seed, "splits")
    by_species: dict[int, list[int]] = {}
    for record, species in enumerate(species_of_record):
        by_species.setdefault(int(species), []).append(record)
    n_unseen = min(len(taxonomy) - 1, max(2, round(UNSEEN_SPECIES_FRACTION * len(taxonomy))))
    unseen = _choose_unseen(rng, taxonomy, n_unseen)
    seen = [s for s in range(len(taxonomy)) if s not in unseen]
    unlabelled = _choose_unlabelled(rng, [by_species[s] for s in seen],
                                    round(NO_SPLIT_FRACTION * len(species_of_record)))
    labels = ["" if record in unlabelled else taxonomy[int(species)].species
              for record, species in enumerate(species_of_record)]
    splits = clibd_split(labels, seed, min_seen_records=2, unseen={taxonomy[s].species for s in unseen})
    return splits, [r in unlabelled for r in range(len(species_of_record))]


def simulate(n_species: int = 60, specimens_per_species: tuple[int, int] = (6, 14), seed: int = 0,
             image_size: int = 224) -> list[SimulatedSpecimen]:
    """Synthetic specimens sorted by id (the TSV's processid); images are drawn on demand by
    :meth:`SimulatedSpecimen.render`.

    `specimens_per_species` is an inclusive (min, max) range drawn per species; the minimum must be
    ≥ 2 so every unseen species can have both a query and a key.
    """
    low, high = specimens_per_species
    if n_species < MIN_SPECIES:
        raise ValueError(f"n_species must be ≥ {MIN_SPECIES} to fill seen and unseen splits, got {n_species}")
    if not 2 <= low <= high:
        raise ValueError(f"specimens_per_species must satisfy 2 ≤ min ≤ max, got {specimens_per_species}")
    taxonomy = make_taxonomy(n_species, seed)
    looks = design_looks(taxonomy, seed)
    haplotypes = evolve_haplotypes(taxonomy, seed)
    rng = _rng(seed, "specimens")
    rates = site_rates(seed)
    species_of_record = [node.index for node in taxonomy for _ in range(int(rng.integers(low, high + 1)))]
    barcodes = [_specimen_barcode(haplotypes[s], rates, rng) for s in species_of_record]
    image_seeds = rng.integers(0, 2**63, size=len(species_of_record))
    numbers = rng.permutation(len(species_of_record)) + 1  # ids must not reveal the species
    splits, unlabelled = assign_splits(species_of_record, taxonomy, seed)
    specimens = []
    for i, s in enumerate(species_of_record):
        node = taxonomy[s]
        pid = f"SYN{numbers[i]:06d}"
        specimens.append(SimulatedSpecimen(
            pid, node.order, node.family, node.genus, "" if unlabelled[i] else node.species, node.bin_uri,
            sequence=barcodes[i], image=f"images/{pid}.jpg", split=splits[i], sampleid=f"SYNS-{numbers[i]:06d}",
            look=looks[s], image_seed=int(image_seeds[i]), image_size=image_size))
    return sorted(specimens, key=lambda sp: sp.id)


# ---------------------------------------------------------------------------------------------
# Writing


def write_tsv(path: Path, specimens: Sequence[SimulatedSpecimen]) -> None:
    """`specimens.tsv`: exactly :data:`TSV_COLUMNS`, tab-separated, one row per specimen."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TSV_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(specimen.row() for specimen in specimens)


def _byte_strings(values: Sequence[str]) -> np.ndarray:
    """Fixed-width byte strings, the dtype CLIBD's loaders decode with `.decode('utf-8')`."""
    encoded = [v.encode("utf-8") for v in values]
    width = max([1, *map(len, encoded)])
    return np.array(encoded, dtype=f"S{width}")


_HDF5_ATTRIBUTES = {"barcode": "sequence", "processid": "id", "image_file": "image"}


def _hdf5_field(specimen: Specimen, name: str) -> str:
    return getattr(specimen, _HDF5_ATTRIBUTES.get(name, name)) or ""


def write_hdf5(path: Path, specimens: Sequence[Specimen], jpegs: dict[str, bytes]) -> None:
    """The CLIBD HDF5 layout: one group per split plus `all_keys`; zero-padded JPEG bytes + true lengths."""
    import h5py

    width = max(len(b) for b in jpegs.values())
    members = {name: [s for s in specimens if s.split == name] for name in SPLITS}
    members["all_keys"] = [s for name in KEY_SPLITS for s in members[name]]
    with h5py.File(path, "w") as h5:
        for name in HDF5_GROUPS:
            group = h5.create_group(name)
            records = members[name]
            images = np.zeros((len(records), width), dtype=np.uint8)
            for row, specimen in enumerate(records):
                data = jpegs[specimen.id]
                images[row, : len(data)] = np.frombuffer(data, dtype=np.uint8)
            group.create_dataset("image", data=images)
            group.create_dataset("image_mask", data=np.array(
                [len(jpegs[s.id]) for s in records], dtype=np.int64))
            for name_ in HDF5_STRING_FIELDS:
                group.create_dataset(name_, data=_byte_strings([_hdf5_field(s, name_) for s in records]))


def _encode(job: tuple[SimulatedSpecimen, int]) -> bytes:
    specimen, quality = job
    return specimen.jpeg(quality)


def encode_images(specimens: Sequence[SimulatedSpecimen], jpeg_quality: int = 90, workers: int = 1,
                  ) -> Iterator[bytes]:
    """JPEG bytes per specimen, in order, as they are rendered (so a caller can show progress); rendering is
    seeded per specimen, so `workers` never changes the bytes."""
    jobs = [(specimen, jpeg_quality) for specimen in specimens]
    if workers <= 1 or len(jobs) < 2 * workers:
        yield from map(_encode, jobs)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_encode, jobs, chunksize=max(1, len(jobs) // (8 * workers)))


def write_simulation(out_dir: Path | str, n_species: int = 60, seed: int = 0, image_size: int = 224,
                     specimens_per_species: tuple[int, int] = (6, 14), jpeg_quality: int = 90,
                     hdf5: bool = True, workers: int = 1, progress: Progress = no_progress) -> dict[str, Any]:
    """Write `specimens.tsv`, `images/*.jpg` and (unless `hdf5=False`) `clibd.hdf5` under `out_dir`.

    `workers` > 1 renders images in that many processes (same bytes, less wall time).  Returns a
    summary: record, species and taxon counts, records per split/group and the file names.
    ``progress`` hears the photos rendered and the HDF5 step (`clibd simulate` shows them).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    specimens = simulate(n_species, specimens_per_species, seed, image_size)
    jpegs: dict[str, bytes] = {}
    with progress("rendering photos", len(specimens)) as advance:
        for specimen, data in zip(specimens, encode_images(specimens, jpeg_quality, workers), strict=True):
            (out / specimen.image).write_bytes(data)
            jpegs[specimen.id] = data
            advance(1)
    write_tsv(out / "specimens.tsv", specimens)
    if hdf5:
        with progress("writing clibd.hdf5", None):
            write_hdf5(out / "clibd.hdf5", specimens, jpegs)
    counts = {name: sum(s.split == name for s in specimens) for name in SPLITS}
    counts["all_keys"] = sum(counts[name] for name in KEY_SPLITS)
    seen = {s.species for s in specimens if s.split in SEEN_SPLITS}
    unseen = {s.species for s in specimens if s.split in UNSEEN_SPLITS}
    return {
        "out_dir": str(out),
        "records": len(specimens),
        "species": len({s.bin for s in specimens}),
        "seen_species": len(seen),
        "unseen_species": len(unseen),
        "genera": len({s.genus for s in specimens}),
        "families": len({s.family for s in specimens}),
        "orders": len({s.order for s in specimens}),
        "splits": counts,
        "image_size": image_size,
        "files": {"tsv": "specimens.tsv", "images": "images", "hdf5": "clibd.hdf5" if hdf5 else None},
    }
