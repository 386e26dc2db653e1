"""WordPiece tokenizer for the taxonomy text ``"{order} {family} {genus} {species}"``.

CLIBD's third modality is the taxonomy written as a short sentence.  With pretrained BERT-small the
tokenizer comes with the weights (``load_text_tokenizer("prajjwal1/bert-small")``); a text encoder
trained from scratch gets a small WordPiece vocabulary learnt from the training labels instead
(:func:`train_text_tokenizer`), so Latin names become a few pieces each rather than a 30k-word English
vocabulary.  Either way the result is a ``transformers.BertTokenizerFast`` saved with
``save_pretrained``, so checkpoints and exported models can ship the exact tokenizer they were trained with.

Weights and tokenizers named by a Hugging Face hub id are read from the local cache first; nothing is
downloaded when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, and a missing download becomes
a :class:`MissingPretrainedError` that says what is missing and how to provide it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import string
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from transformers import BertTokenizerFast

from clibd_cli.errors import ClibdError

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Every letter and digit, alone and as a word continuation, so a name never seen in training still splits
# into pieces instead of becoming one [UNK] (new species are exactly what the model must cope with).
_WORD_CHARS = string.ascii_letters + string.digits
_ALPHABET_PIECES: tuple[str, ...] = (*_WORD_CHARS, *(f"##{c}" for c in _WORD_CHARS), *".-'()/,&")
_TRUE = ("1", "true", "yes", "on")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")

T = TypeVar("T")


class MissingPretrainedError(ClibdError, RuntimeError):
    """Pretrained weights or a tokenizer were asked for but are neither local nor downloadable."""


def offline_mode() -> bool:
    """True when the Hugging Face offline switches are set *now* (read at call time, not import time)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connect, so a machine without network fails in seconds.

    huggingface_hub retries unreachable hosts with back-off for about a minute per file; behind a proxy we
    cannot tell, so we assume it is reachable and let the download decide.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def missing_message(source: str, what: str, setting: str, reason: str = "", off: str = "null") -> str:
    """One message for every missing-weights case, naming the id and both ways out."""
    why = "HF_HUB_OFFLINE is set" if offline_mode() else "it could not be downloaded"
    return (f"{what} '{source}' is not a local directory, is not in the Hugging Face cache and {why}"
            f"{f' ({reason})' if reason else ''}. Download it on a machine with network access "
            f"(e.g. `hf download {source} --local-dir DIR`), copy DIR here and set {setting} to that path, "
            f"or set {setting} to {off} to train from scratch.")


def from_local_or_hub(loader: Callable[..., T], source: str, *, what: str, setting: str, **kwargs) -> T:
    """Call a ``from_pretrained``-style loader on a local path, else on the hub cache, else on the hub.

    The cache is tried first with ``local_files_only=True`` so a cached model never touches the network
    (no timeouts on an offline machine that did not set HF_HUB_OFFLINE).
    """
    if Path(source).expanduser().exists():
        try:
            return loader(str(Path(source).expanduser()), **kwargs)
        except (OSError, ValueError) as exc:
            raise ClibdError(f"{source}: cannot load the {what} from this path ({exc}).") from exc
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        if offline_mode():
            raise MissingPretrainedError(missing_message(source, what, setting)) from exc
        if not hub_reachable():
            raise MissingPretrainedError(missing_message(source, what, setting, "no network connection")) from exc
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise MissingPretrainedError(missing_message(source, what, setting, str(exc).splitlines()[0])) from exc


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 2000, out_dir: str | Path | None = None, *,
                         lowercase: bool = False, min_frequency: int = 1) -> BertTokenizerFast:
    """A WordPiece vocabulary for taxonomy strings: whole taxon names plus single-letter pieces.

    Taxon names are the natural units of this text (a genus is one token, as in BERT-small's
    vocabulary for common words), and the letter pieces (`x`, `##x`) spell any name not in the
    vocabulary instead of mapping it to [UNK].  The most frequent names are kept (ties broken by
    name) and ids are assigned in sorted order, so the same texts always give the same tokenizer:
    the `tokenizers` WordPiece trainer does not (its merges and ids vary between runs), which made
    identical runs train different models.  Case is kept by default so decoded text matches labels.
    """
    from collections import Counter

    from tokenizers.pre_tokenizers import BertPreTokenizer

    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise ClibdError("cannot train a text tokenizer: no taxonomy strings were given.")
    split = BertPreTokenizer()
    counts = Counter(word for text in texts
                     for word, _ in split.pre_tokenize_str(text.lower() if lowercase else text))
    letters = {p for p in _ALPHABET_PIECES if not (lowercase and p.lower() != p)}
    letters |= {c for word in counts for c in word} | {f"##{c}" for word in counts for c in word}
    room = max(0, vocab_size - len(SPECIAL_TOKENS) - len(letters))
    frequent = sorted((w for w in counts if counts[w] >= min_frequency and w not in letters),
                      key=lambda w: (-counts[w], w))[:room]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(letters | set(frequent))])}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=lowercase, strip_accents=False,
                                  tokenize_chinese_chars=False)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def load_text_tokenizer(path_or_hub_id: str | Path) -> BertTokenizerFast:
    """A tokenizer saved by :func:`train_text_tokenizer` (a directory) or a hub id such as a BERT's."""
    return from_local_or_hub(_tokenizer_from, str(path_or_hub_id), what="text tokenizer",
                             setting="model.text.pretrained")


def _tokenizer_from(source: str, local_files_only: bool = False) -> BertTokenizerFast:
    """Load from a directory that really holds tokenizer files.

    transformers 5 quietly returns a 5-token tokenizer for a directory or hub id without any, which would
    train a text encoder on nothing but [UNK]; so the files are located (or downloaded) first.
    """
    directory = Path(source).expanduser()
    if not directory.is_dir():
        directory = _hub_tokenizer_dir(source, local_files_only)
    if not any((directory / name).exists() for name in _TOKENIZER_FILES):
        raise OSError(f"no {' or '.join(_TOKENIZER_FILES)} in {directory}")
    return BertTokenizerFast.from_pretrained(str(directory))


def _hub_tokenizer_dir(repo_id: str, local_files_only: bool) -> Path:
    """The snapshot directory of a hub repo holding its tokenizer files (fetched unless ``local_files_only``)."""
    from huggingface_hub import hf_hub_download

    error: Exception | None = None
    for name in _TOKENIZER_FILES:
        try:
            path = Path(hf_hub_download(repo_id, name, local_files_only=local_files_only))
        except (OSError, ValueError) as exc:
            error = exc
            continue
        for extra in _TOKENIZER_EXTRAS:  # casing and special tokens, when the repo has them
            with contextlib.suppress(OSError, ValueError):
                hf_hub_download(repo_id, extra, local_files_only=local_files_only)
        return path.parent
    raise OSError(f"{repo_id}: no tokenizer files ({error})") from error
