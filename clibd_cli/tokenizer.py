"""Vectorised k-mer tokenizer for BarcodeBERT-style DNA encoders.

Two vocabulary layouts exist (see CLIBD_REFERENCE.md):

* ``current`` (BarcodeBERT, k=4 by default): ``[MASK]=0, [UNK]=1``, then every ACGT k-mer in
  lexicographic order, so a k-mer's id is ``2 + base-4 index``.  Non-overlapping (stride k).  Padding
  (the sequence is padded with ``N`` to ``max_len``) gives UNK tokens with attention mask 0.
* ``legacy`` (official CLIBD checkpoints, k=5): ``<MASK>=0, <CLS>=1, <UNK>=2``, k-mers from 3, and the
  token sequence is ``[0] + ids``; no attention mask (all ones).

Both the trainer and the inference runtime call this module, so a model never sees tokens made by
different code in training and in the field.  Sequences are expected normalised
(:func:`clibd_cli.sequences.normalise_sequence`); any non-ACGT letter makes its k-mer UNK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

LAYOUTS = ("current", "legacy")

# Byte → base code: A=0, C=1, G=2, T=3, anything else 4 (unknown).
_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _base in enumerate(b"ACGT"):
    _CODE[_base] = _i
    _CODE[_base + 32] = _i  # lower case, should normalisation have been skipped


def encode_bases(sequences: Sequence[str], length: int) -> np.ndarray:
    """Sequences → uint8 codes [N, length], truncated or padded with the unknown code 4."""
    out = np.full((len(sequences), length), 4, dtype=np.uint8)
    for row, seq in enumerate(sequences):
        raw = np.frombuffer(seq[:length].encode("ascii", "replace"), dtype=np.uint8)
        out[row, : raw.size] = _CODE[raw]
    return out


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything needed to rebuild the tokenizer; stored in model manifests and checkpoints."""

    k: int = 4
    layout: str = "current"
    max_len: int = 660  # in base pairs

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown tokenizer layout {self.layout!r}; use one of {LAYOUTS}")
        if not 1 <= self.k <= 8:
            raise ValueError(f"k must be between 1 and 8, got {self.k}")

    def to_dict(self) -> dict:
        return asdict(self)


class KmerTokenizer:
    """Non-overlapping k-mer tokenizer in either BarcodeBERT layout."""

    def __init__(self, config: TokenizerConfig | None = None, **kwargs) -> None:
        self.config = config or TokenizerConfig(**kwargs)
        k = self.config.k
        self.k = k
        self.layout = self.config.layout
        self.max_len = self.config.max_len
        self.n_kmers = self.max_len // k
        if self.layout == "current":
            self.mask_id, self.unk_id, self.offset, self.cls_id = 0, 1, 2, None
        else:
            self.mask_id, self.cls_id, self.unk_id, self.offset = 0, 1, 2, 3
        self.vocab_size = 4**k + self.offset
        self.pad_id = self.unk_id
        self._weights = (4 ** np.arange(k - 1, -1, -1)).astype(np.int64)

    @property
    def seq_len(self) -> int:
        """Number of token positions per sequence."""
        return self.n_kmers + (1 if self.layout == "legacy" else 0)

    def __call__(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (input_ids int64 [N, seq_len], attention_mask int64 [N, seq_len])."""
        n, k = len(sequences), self.k
        codes = encode_bases(sequences, self.n_kmers * k).reshape(n, self.n_kmers, k)
        unknown = (codes == 4).any(axis=2)
        ids = codes.astype(np.int64) @ self._weights + self.offset
        ids[unknown] = self.unk_id
        lengths = np.fromiter((min(len(s), self.max_len) for s in sequences), dtype=np.int64, count=n)
        n_real = -(-lengths // k)  # tokens that hold at least one real base
        mask = (np.arange(self.n_kmers)[None, :] < n_real[:, None]).astype(np.int64)
        if self.layout == "legacy":
            ids = np.concatenate([np.full((n, 1), self.mask_id, dtype=np.int64), ids], axis=1)
            mask = np.ones_like(ids)
        return ids, mask

    def kmer_to_id(self, kmer: str) -> int:
        """Id of one k-mer string (UNK for anything with a non-ACGT letter)."""
        if len(kmer) != self.k or any(c not in "ACGT" for c in kmer):
            return self.unk_id
        return self.offset + int("".join(str("ACGT".index(c)) for c in kmer), 4)


# ---------------------------------------------------------------------------------------------
# CLIP text (open_clip's SimpleTokenizer), for open_clip bundles such as BioCLIP

# What open_clip's ``basic_clean`` gets from ftfy.fix_text that can matter in taxon names: curly quotes
# straightened (``d’Orbigny`` → ``d'Orbigny``), Latin ligatures split, full-width forms made ASCII.
# The rest of the cleaning (NFC, whitespace runs → one space, strip, lower case) is in the bundle's
# tokenizer.json, and the BPE itself (bpe_simple_vocab_16e6, ``</w>`` end of word, <start_of_text> …
# <end_of_text>, 77 tokens, truncation keeping <end_of_text>, padding with 0) is the `tokenizers` model.
# Not repeated: ftfy's repair of mis-decoded text ("Ã©" for "é"), which a taxonomy string should not need.
_CLIP_TRANSLATION = {
    **{c: "'" for c in (0x02BC, 0x2018, 0x2019, 0x201A, 0x201B)},
    **{c: '"' for c in (0x201C, 0x201D, 0x201E, 0x201F)},
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "st", 0xFB06: "st",
    0x3000: " ", **{c: chr(c - 0xFF01 + 0x21) for c in range(0xFF01, 0xFF5F)},
}


def clip_clean(text: str) -> str:
    """``text`` cleaned as open_clip's tokenizer cleans it before its regex and BPE (ftfy's relevant fixes,
    then HTML entities unescaped twice); lower-casing and whitespace are left to the tokenizer.json."""
    import html
    import unicodedata

    text = unicodedata.normalize("NFC", text.translate(_CLIP_TRANSLATION))
    return html.unescape(html.unescape(text))


def drop_repeated_words(text: str) -> str:
    """``"Hymenoptera Apidae Apis Apis mellifera"`` → ``"Hymenoptera Apidae Apis mellifera"``: the genus
    that the taxonomy string repeats before a binomial species name, said once (as BioCLIP's taxonomic
    names were written in training: ``… Carabidae Poecilus lepidus``)."""
    words = text.split()
    return " ".join(w for i, w in enumerate(words) if i == 0 or w != words[i - 1])
