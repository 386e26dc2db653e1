"""Darwin Core rows for clibd's calls: ``--format dwc`` (or ``-o calls.dwc.csv``) of `match` and `classify`.

Barcoding labs publish their identifications to GBIF as Darwin Core occurrences.  Each result row becomes
one occurrence (``occurrenceID`` is the query id) with the call as Darwin Core Identification and Taxon
terms, written as a CSV whose header is the terms' names, and, for barcodes, the query sequence and its
marker as the GBIF DNA derived data extension's ``DNA_sequence`` and ``target_gene``.  The table is flat
(one row per occurrence, extension columns included), the shape GBIF's IPT maps from a spreadsheet; a
Darwin Core Archive keeps the two DNA columns in an extension file joined on ``occurrenceID``.  Term
names are those of the published lists (``tests/data/dwc_terms.txt`` cites them; the tests check every
column against it).

Choices, from the term definitions:

* ``basisOfRecord``: a barcode is sequenced from tissue taken from a specimen, a *MaterialSample* ("a
  physical result of a sampling (or subsampling) event … collected, and either preserved or
  destructively processed"); the GBIF DNA-derived data guide files specimen barcodes under it too.  A
  photo is *MachineObservation* ("an output of a machine observation process", whose examples start
  with "a photograph"): the call is made from the image by a machine, not from the specimen itself nor
  by a person looking at it (*HumanObservation*).
* ``kingdom``, ``phylum``, ``class`` stay empty.  clibd's references carry order to species only
  (:data:`clibd_cli.schema.RANKS`); nothing in them says that an order is an insect order (the bundled
  example's orders are invented, and ``--marker`` admits plant and fungal markers), and filling
  Animalia/Arthropoda/Insecta from the order's name would need a taxonomy clibd does not have.  The
  columns are there for a lab that knows its scope to fill.
* ``scientificName`` and ``taxonRank`` are the deepest called rank; uncalled ranks are empty, and a
  ``no_match`` or ``error`` row has no name, with ``identificationRemarks`` saying why.
* ``specificEpithet`` is the second word of a called species whose first word is the called genus, and
  only when it looks like an epithet (lower-case letters): interim names such as ``Aedes sp. BOLD:AAA1``
  have none.
* ``identificationVerificationStatus`` is ``0``, "unverified" in HISPID/ABCD (the vocabulary the term
  recommends): a machine's call that nobody has checked.  Rows without a name leave it empty.
* ``identifiedBy`` is clibd and its version; ``dateIdentified`` the run's start in ISO 8601 (UTC).
* ``DNA_sequence`` is the query as clibd read it (upper case, gaps removed, IUPAC codes as N, end Ns
  trimmed); ``target_gene`` the marker the query file names for the row (a BOLD ``marker_code`` column
  or FASTA header, e.g. ``COI-5P``), empty where the file does not say: clibd does not guess a marker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from clibd_cli import __version__
from clibd_cli.calibrate import applied_lead_rules, applied_thresholds, describe_threshold
from clibd_cli.match import MIN_CALL_OVERLAP
from clibd_cli.schema import RANKS

BARCODE, PHOTO = "barcode", "photo"
SUBJECTS = (BARCODE, PHOTO)
BASIS_OF_RECORD = {BARCODE: "MaterialSample", PHOTO: "MachineObservation"}
CORE_TERMS = ["occurrenceID", "basisOfRecord", "scientificName", "taxonRank", "kingdom", "phylum", "class",
              "order", "family", "genus", "specificEpithet", "identificationRemarks", "identifiedBy",
              "dateIdentified", "identificationVerificationStatus"]
DNA_TERMS = ["DNA_sequence", "target_gene"]  # GBIF DNA derived data extension
UNVERIFIED = "0"  # HISPID/ABCD
_EPITHET = re.compile(r"[a-z][a-z-]*[a-z]")
_STATUS_MEANS = {
    "assigned": "species called",
    "novel_candidate": "no reference close enough for a species call, so possibly a species missing from the "
                       "reference",
    "rolled_up": "called at a higher rank only",
    "no_match": "no rank's score reaches its threshold",
}


def dwc_columns(subject: str) -> list[str]:
    """The terms of a Darwin Core output: the DNA extension's two only for barcodes."""
    return [*CORE_TERMS, *(DNA_TERMS if subject == BARCODE else [])]


def identification_date(now: datetime | None = None) -> str:
    """ISO 8601 date and time in UTC, to the second (``2025-03-01T14:07:09Z``)."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def specific_epithet(species: str, genus: str) -> str:
    """The epithet of a binomial ``Genus epithet`` of the called genus, else ``""`` (interim names have none)."""
    words = species.split()
    if len(words) == 2 and words[0] == genus and _EPITHET.fullmatch(words[1]):
        return words[1]
    return ""


def dwc_row(row: Mapping[str, Any], subject: str, info: Mapping[str, Any], identified: str, *,
            sequence: str = "", marker: str = "") -> dict[str, Any]:
    """One occurrence (columns :func:`dwc_columns`) from a result row of `match` or `classify`.

    ``info`` is the run's record (thresholds, model…), ``identified`` the :func:`identification_date` of
    the run; ``sequence`` and ``marker`` are the query's, for barcodes.
    """
    labels = {rank: _text(row.get(rank)) for rank in RANKS}
    rank = _text(row.get("rank")) if row.get("rank") in RANKS and row.get("status") != "error" else ""
    name = labels[rank] if rank else ""
    rank = rank if name else ""
    out: dict[str, Any] = {
        "occurrenceID": _text(row.get("query_id")), "basisOfRecord": BASIS_OF_RECORD[subject],
        "scientificName": name, "taxonRank": rank, "kingdom": "", "phylum": "", "class": "",
        **({r: labels[r] for r in RANKS if r != "species"} if rank else dict.fromkeys(RANKS[:-1], "")),
        "specificEpithet": specific_epithet(labels["species"], labels["genus"]) if rank == "species" else "",
        "identificationRemarks": identification_remarks(row, subject, info),
        "identifiedBy": f"clibd {info.get('clibd_version') or __version__}",
        "dateIdentified": identified, "identificationVerificationStatus": UNVERIFIED if name else "",
    }
    if subject == BARCODE:
        out["DNA_sequence"] = sequence
        out["target_gene"] = marker
    return out


def identification_remarks(row: Mapping[str, Any], subject: str, info: Mapping[str, Any]) -> str:
    """How the call was made, in one readable line: method, status, the called rank's score against its
    threshold, why the next rank was not called, the top hit, the thresholds' origin and the flags."""
    status = _text(row.get("status"))
    parts = [_method(row, subject, info)]
    if status == "error":
        reason = _text(row.get("error")) or "the query could not be read"
        return "; ".join([*parts, f"error: not identified ({reason})"])
    thresholds = _thresholds(row, info)
    rank = _text(row.get("rank"))
    parts.append(f"{status}: {_too_short(row, subject) or _STATUS_MEANS.get(status, status)}")
    if rank:
        parts.append(f"called to {rank}, {_score(row, rank, thresholds)}{_by_lead(row, rank, thresholds, info)}")
    finer = RANKS[RANKS.index(rank) + 1] if rank in RANKS[:-1] else (RANKS[0] if not rank else "")
    if finer:
        parts.append(f"{finer} not called, {_score(row, finer, thresholds)}")
    parts.append(_top_hit(row, subject))
    if subject == BARCODE and info.get("thresholds_from"):
        parts.append(f"thresholds: {info['thresholds_from']}")
    if _text(row.get("flags")):
        parts.append(f"flags: {row['flags']}")
    return "; ".join(p for p in parts if p)


def _method(row: Mapping[str, Any], subject: str, info: Mapping[str, Any]) -> str:
    if subject == BARCODE:
        encoder = info.get("encoder")
        name = encoder.get("name", "") if isinstance(encoder, Mapping) else _text(encoder)
        proposer = f"{name} search" if name else "embedding search"
        return f"clibd match: {proposer}, calls on alignment identity to the reference"
    against = _text(row.get("against")) or _text(info.get("against"))
    model = f" with model {info['model']}" if info.get("model") else ""
    return f"clibd classify: photo embedding{model} against {against or 'reference'} references"


def _thresholds(row: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, float]:
    return {r: v for r, v in applied_thresholds(info, row).items() if isinstance(v, int | float)}


def _score(row: Mapping[str, Any], rank: str, thresholds: Mapping[str, float]) -> str:
    score = row.get(f"{rank}_score")
    text = f"score {score:.3f}" if isinstance(score, int | float) else "no score"
    threshold = thresholds.get(rank)
    if threshold is None:
        return text
    return f"{text} (threshold {describe_threshold(threshold)})"


def _by_lead(row: Mapping[str, Any], rank: str, thresholds: Mapping[str, float], info: Mapping[str, Any]) -> str:
    """For a rank called below its threshold by its lead rule: which rule."""
    rule, score, threshold = applied_lead_rules(info, row).get(rank), row.get(f"{rank}_score"), thresholds.get(rank)
    if not isinstance(rule, Mapping) or not isinstance(score, int | float) or threshold is None or score >= threshold:
        return ""
    spread = f", and within the {rank}'s own spread in the reference" if rule.get("within_spread") else ""
    return (f", by its lead rule: from {rule['threshold']:.3f} when {100 * rule['lead']:.2g} identity points "
            f"above any other {rank}{spread}")


def _too_short(row: Mapping[str, Any], subject: str) -> str:
    """Why a barcode's no_match has no call when its top hit overlaps it too little to support one; else ""."""
    try:
        overlap = int(row.get("overlap"))  # (a number, or its text in a file read back)
    except (TypeError, ValueError):
        return ""
    if subject != BARCODE or _text(row.get("status")) != "no_match" or overlap >= MIN_CALL_OVERLAP:
        return ""
    return f"its top hit overlaps it by {overlap} bp, fewer than the {MIN_CALL_OVERLAP} bp a call at any rank needs"


def _top_hit(row: Mapping[str, Any], subject: str) -> str:
    hit = _text(row.get("top_hit_id"))
    if not hit:
        return ""
    if subject == BARCODE and isinstance(row.get("identity"), int | float):
        return f"top hit {hit}: {row['identity']:.2f} % identity over {row.get('overlap')} bp"
    similarity = row.get("top_hit_similarity")
    return f"top hit {hit}: similarity {similarity:.3f}" if isinstance(similarity, int | float) else f"top hit {hit}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)
