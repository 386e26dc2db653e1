"""A self-contained HTML page of a match or classify run, for people who would rather look than read a CSV.

Why one file with everything inline (CSS, a little JavaScript, thumbnails as ``data:`` URIs): it is mailed,
opened in the field without a network, and archived beside the run, so nothing may be fetched at view time.
The rows are rendered here, in Python, so the page reads without JavaScript; the script only filters
(a text box and a status menu) and sorts (click a column heading).

Every value comes from user files (ids, species names, flags, the run's info), so every one goes through
:func:`html.escape`, attribute values included; the page embeds no JSON, so no value ever lands inside the
``<script>`` element.  Bars show each rank's score (alignment identity for barcodes, cosine similarity for
photos) on a 0-1 scale with the rank's threshold as a tick when the run recorded it; a called rank's bar is
green.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clibd_cli import __version__
from clibd_cli.calibrate import applied_thresholds, describe_threshold
from clibd_cli.result_files import RunResults, to_number
from clibd_cli.schema import RANKS

# Statuses in the order the commands' summaries print them (unknown ones follow, alphabetically).
STATUS_ORDER = ("assigned", "novel_candidate", "rolled_up", "no_match", "error")
NOT_CALLED = "none"
MAX_HITS_SHOWN = 5
# Barcode identities that matter lie between ~75 % (orders) and 100 %: their bars start at 70 %, or every
# bar of a match run would look full.  Photo scores (cosine) use the whole 0-1 range.
IDENTITY_BAR_FROM = 0.7
# The page may load nothing: images only from data: URIs, style and script only inline.
CONTENT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass
class Summary:
    """How many rows have each status, and how many were called at each rank (``none``: not called)."""

    total: int
    statuses: dict[str, int]
    ranks: dict[str, int]


def summarise(rows: list[dict[str, Any]]) -> Summary:
    """Counts per status and per called rank, statuses in :data:`STATUS_ORDER`, ranks finest first."""
    statuses = Counter(str(row.get("status", "")) for row in rows)
    ranks = Counter(str(row.get("rank") or NOT_CALLED) for row in rows)
    status_order = [s for s in STATUS_ORDER if s in statuses] + sorted(set(statuses) - set(STATUS_ORDER))
    rank_order = [r for r in (*reversed(RANKS), NOT_CALLED) if r in ranks] + sorted(
        set(ranks) - {*RANKS, NOT_CALLED})
    return Summary(len(rows), {s: statuses[s] for s in status_order}, {r: ranks[r] for r in rank_order})


def _e(value: Any) -> str:
    """Escaped text of a cell (quotes too, so it is safe in attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def _thresholds(meta: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, float]:
    """The thresholds that applied to ``row`` (:func:`~clibd_cli.calibrate.applied_thresholds`), as numbers in 0–1."""
    table = applied_thresholds(meta, row)
    return {rank: number for rank in RANKS if (number := to_number(table.get(rank))) is not None
            and 0.0 <= number <= 1.0}


def _position(value: float, low: float) -> float:
    """Where ``value`` lies on a bar running from ``low`` to 1, in percent (clamped)."""
    return max(0.0, min(1.0, (value - low) / (1.0 - low))) * 100


def _bar(row: Mapping[str, Any], rank: str, threshold: float | None, called: bool, low: float) -> tuple[str, str]:
    """The cell of one rank: its name, a bar of its score from ``low`` to 1 with the threshold tick; and the
    sort key."""
    score = to_number(row.get(f"{rank}_score"))
    identity = to_number(row.get(f"{rank}_identity"))
    name = str(row.get(rank) or "")
    label = f"{identity:.1f} %" if identity is not None else (f"{score:.3f}" if score is not None else "")
    title = f"{rank} score {score:.4f}" if score is not None else f"{rank}: no score"
    if threshold is not None:
        title += f", threshold {describe_threshold(threshold)}"
    parts = [f'<div class="taxon" title="{_e(name)}">{_e(name)}</div>' if name else
             '<div class="taxon dim">–</div>']
    if score is not None:
        width = _position(score, low)
        tick = (f'<i class="tick" style="left:{_position(threshold, low):.1f}%"></i>'
                if threshold is not None and low <= threshold <= 1.0 else "")
        parts.append(f'<div class="bar{" called" if called else ""}" title="{_e(title)}">'
                     f'<b style="width:{width:.1f}%"></b>{tick}</div><div class="score">{_e(label)}</div>')
    return "".join(parts), "" if score is None else f"{score:.6f}"


def _call(row: Mapping[str, Any]) -> tuple[str, str]:
    rank = str(row.get("rank") or "")
    name = str(row.get(rank) or "") if rank in RANKS else ""
    if not name:
        return '<span class="dim">not called</span>', ""
    return f'<div class="rank">{_e(rank)}</div><div class="name">{_e(name)}</div>', name


def _hits_cell(row: Mapping[str, Any], hits: list[dict[str, Any]] | None) -> tuple[str, str]:
    """Top hits (from --hits) as a short list; without them the row's own top hit."""
    if hits:
        items = []
        for hit in hits[:MAX_HITS_SHOWN]:
            similarity = to_number(hit.get("similarity"))
            identity = to_number(hit.get("identity"))
            taxon = next((str(hit[r]) for r in reversed(RANKS) if hit.get(r)), "")
            figure = f"{identity:.1f} %" if identity is not None else (
                f"{similarity:.3f}" if similarity is not None else "")
            items.append(f'<li><span class="num">{_e(figure)}</span> {_e(taxon)} '
                         f'<span class="dim">{_e(hit.get("hit_id", ""))}</span></li>')
        best = to_number(hits[0].get("similarity"))
        return f'<ol class="hits">{"".join(items)}</ol>', "" if best is None else f"{best:.6f}"
    similarity = to_number(row.get("top_hit_similarity"))
    if not row.get("top_hit_id"):
        return '<span class="dim">–</span>', ""
    figure = f"{similarity:.3f}" if similarity is not None else ""
    return (f'<span class="num">{_e(figure)}</span> <span class="dim">{_e(row.get("top_hit_id"))}</span>',
            "" if similarity is None else f"{similarity:.6f}")


def _searchable(row: Mapping[str, Any], hits: list[dict[str, Any]] | None) -> str:
    """Lower-case text the filter box matches: id, status, taxa, flags, error, bin and the hits' taxa."""
    words = [row.get(k) for k in ("query_id", "status", "rank", *RANKS, "flags", "error", "bin", "top_hit_id")]
    for hit in hits or []:
        words += [hit.get("hit_id"), *(hit.get(r) for r in RANKS)]
    return " ".join(str(w) for w in words if w not in (None, "")).lower()


def _readable_thresholds(value: Any) -> Any:
    """Threshold numbers that stand for a rule (never called, not calibrated) in words, at any depth."""
    if isinstance(value, dict):
        return {k: _readable_thresholds(v) for k, v in value.items()}
    return describe_threshold(value) if isinstance(value, int | float) else value


def _info_html(value: Any, depth: int = 0) -> str:
    """The run info as nested definition lists: a list of sets (the short-read thresholds, one per overlap
    range) as a numbered list of them, a list of plain values as text; JSON only past a few levels."""
    if isinstance(value, dict) and "thresholds" in value:
        value = {**value, "thresholds": _readable_thresholds(value["thresholds"])}
    if isinstance(value, dict) and value and depth < 4:
        items = "".join(f"<dt>{_e(k)}</dt><dd>{_info_html(v, depth + 1)}</dd>" for k, v in value.items())
        return f"<dl>{items}</dl>"
    if isinstance(value, list) and value and depth < 4:
        if all(not isinstance(v, dict | list) for v in value):
            return _e(", ".join(str(v) for v in value))
        return "<ol>" + "".join(f"<li>{_info_html(v, depth + 1)}</li>" for v in value) + "</ol>"
    if isinstance(value, dict | list):
        return f"<code>{_e(json.dumps(value, ensure_ascii=False))}</code>"
    return _e(value)


def run_description(results: RunResults) -> dict[str, Any]:
    """What the run recorded about itself: the JSON info block, then what only the run record beside it adds."""
    described = dict(results.info)
    for key, value in results.identity.items():
        described.setdefault(key, value)
    return described


def render_report(results: RunResults, hits: Mapping[str, list[dict[str, Any]]] | None = None,
                  thumbnails: Mapping[str, str] | None = None, *, title: str | None = None) -> str:
    """The whole page as one string.  ``hits``: {query id: hits} from the run's --hits table; ``thumbnails``:
    {query id: data URI} (photo runs); rows without one show none."""
    rows, photo_run = results.rows, results.kind == "classify"
    meta = run_description(results)
    summary = summarise(rows)
    low = 0.0 if photo_run else IDENTITY_BAR_FROM
    title = title or f"clibd {results.kind}: {results.path.name}"
    headings = ([("photo", "")] if photo_run else []) + [("query", "text"), ("status", "text"), ("call", "text")]
    headings += [(rank, "num") for rank in RANKS] + [("top hits" if hits else "top hit", "num"), ("flags", "text")]
    head = "".join(f'<th data-type="{kind}" scope="col">{_e(name)}</th>' if kind else f'<th scope="col">{_e(name)}'
                   "</th>" for name, kind in headings)
    body = []
    for row in rows:
        query_id = str(row.get("query_id", ""))
        row_hits = hits.get(query_id) if hits else None
        thresholds = _thresholds(meta, row)
        status = str(row.get("status", ""))
        called_rank = str(row.get("rank") or "")
        called_upto = RANKS.index(called_rank) if called_rank in RANKS else -1
        cells = []
        if photo_run:
            uri = (thumbnails or {}).get(query_id)
            image = f'<img class="thumb" src="{uri}" alt="{_e(query_id)}">' if uri else '<span class="dim">–</span>'
            cells.append(f"<td>{image}</td>")
        cells.append(f'<td data-sort="{_e(query_id)}" class="id">{_e(query_id)}</td>')
        cells.append(f'<td data-sort="{_e(status)}"><span class="status s-{_e(status)}">{_e(status)}</span></td>')
        call, call_key = _call(row)
        cells.append(f'<td data-sort="{_e(call_key)}" class="call">{call}</td>')
        for i, rank in enumerate(RANKS):
            bar, key = _bar(row, rank, thresholds.get(rank), i <= called_upto, low)
            cells.append(f'<td data-sort="{key}" class="rankcell">{bar}</td>')
        hits_html, hits_key = _hits_cell(row, row_hits)
        cells.append(f'<td data-sort="{hits_key}">{hits_html}</td>')
        flags = [f for f in str(row.get("flags") or "").split(",") if f]
        error = str(row.get("error") or "")
        flag_html = "".join(f'<span class="flag">{_e(f)}</span>' for f in flags)
        if error:
            flag_html += f'<div class="error">{_e(error)}</div>'
        cells.append(f'<td data-sort="{_e(",".join(flags) + error)}">{flag_html}</td>')
        body.append(f'<tr data-status="{_e(status)}" data-text="{_e(_searchable(row, row_hits))}">'
                    f'{"".join(cells)}</tr>')
    status_cards = "".join(f'<div class="card"><span class="status s-{_e(s)}">{_e(s)}</span>'
                           f'<span class="count" data-status="{_e(s)}">{n:,}</span></div>'
                           for s, n in summary.statuses.items())
    rank_cards = "".join(f'<div class="card"><span class="rk">{_e("not called" if r == NOT_CALLED else r)}</span>'
                         f'<span class="count" data-rank="{_e(r)}">{n:,}</span></div>'
                         for r, n in summary.ranks.items())
    options = "".join(f'<option value="{_e(s)}">{_e(s)} ({n:,})</option>' for s, n in summary.statuses.items())
    info = (f'<details class="info" open><summary>run info</summary>{_info_html(meta)}</details>' if meta else
            '<p class="dim">This output carries no run info (no JSON info block, no run record beside it).</p>')
    what = "photos" if photo_run else "queries"
    scale = ("cosine similarity of photo and reference, 0 to 1" if photo_run else
             f"the identity of the best reference at that rank, lowered where references of other taxa share "
             f"the vote, {100 * low:.0f} to 100 %; the number beside it is that identity")
    return _PAGE.format(
        title=_e(title), version=_e(__version__), source=_e(results.path.name), total=f"{summary.total:,}",
        what=what, status_cards=status_cards, rank_cards=rank_cards, info=info, options=options,
        head=head, body="\n".join(body), scale=_e(scale), css=_CSS, script=_SCRIPT, csp=CONTENT_POLICY)


def write_page(page: str, path: Path) -> None:
    """Write the page whole or not at all (a temporary file renamed over ``path``): an interrupted write never
    leaves half a report that looks complete in a browser."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_CSS = """
:root{--fg:#1d2327;--dim:#6b7780;--line:#dde3e8;--bg:#f6f8fa;--ok:#2e8540;--warn:#b7791f;--bad:#c53030;
--novel:#805ad5;--bar:#b8c2cc}
*{box-sizing:border-box}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0;padding:16px 20px}
h1{font-size:18px;margin:0 0 4px}
.sub{color:var(--dim);margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 8px}
.cards h2{font-size:12px;font-weight:600;color:var(--dim);width:100%;margin:4px 0 0;text-transform:uppercase}
.card{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:6px 10px;display:flex;
gap:8px;align-items:center}
.count{font-size:16px;font-weight:600;font-variant-numeric:tabular-nums}
.info{margin:8px 0 12px;background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:6px 10px}
.info summary{cursor:pointer;font-weight:600}
.info dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:4px 0}
.info dd{margin:0;overflow-wrap:anywhere}.info dt{color:var(--dim)}
.info dd dl{margin:0}
code{font-size:12px}
.controls{display:flex;gap:10px;align-items:center;margin:8px 0;position:sticky;top:0;background:#fff;padding:6px 0;
z-index:2}
.controls input{font:inherit;padding:5px 8px;width:320px;border:1px solid var(--line);border-radius:4px}
.controls select{font:inherit;padding:4px}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-weight:600;border-bottom:2px solid var(--line);padding:6px;white-space:nowrap;
position:sticky;top:40px;background:#fff;z-index:1}
th[data-type]{cursor:pointer;user-select:none}
th[data-type]::after{content:"\\2195";color:var(--line);margin-left:4px}
th[aria-sort=ascending]::after{content:"\\25B2";color:var(--fg)}
th[aria-sort=descending]::after{content:"\\25BC";color:var(--fg)}
td{border-bottom:1px solid var(--line);padding:5px 6px;vertical-align:top}
tr:hover td{background:#fafbfc}
.id{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;overflow-wrap:anywhere;max-width:16em}
.thumb{width:auto;height:auto;max-width:96px;max-height:96px;display:block;border-radius:3px;background:var(--bg)}
.status{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;background:#e2e8f0;white-space:nowrap}
.s-assigned{background:#d4edda;color:#1e5c2c}.s-rolled_up{background:#fdefc8;color:#744210}
.s-novel_candidate{background:#e9d8fd;color:#44337a}.s-no_match{background:#fed7d7;color:#822727}
.s-error{background:var(--bad);color:#fff}
.call .rank{font-size:11px;color:var(--dim)}.call .name{font-weight:600}
.rankcell{min-width:92px}
.taxon{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:150px}
.bar{position:relative;height:7px;width:84px;background:#edf0f2;border-radius:3px;margin-top:3px}
.bar b{position:absolute;left:0;top:0;bottom:0;background:var(--bar);border-radius:3px}
.bar.called b{background:var(--ok)}
.bar .tick{position:absolute;top:-2px;bottom:-2px;width:2px;background:var(--fg);margin-left:-1px}
.score{font-size:11px;color:var(--dim);font-variant-numeric:tabular-nums}
.hits{margin:0;padding-left:18px;font-size:12px}.hits li{white-space:nowrap}
.num{font-variant-numeric:tabular-nums}
.dim{color:var(--dim)}
.flag{display:inline-block;background:#fff4e5;color:#7b4a12;border-radius:3px;padding:0 5px;margin:0 3px 2px 0;
font-size:11px}
.error{color:var(--bad);font-size:12px;max-width:28em}
footer{color:var(--dim);margin-top:12px;font-size:12px}
"""

_SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("rows"), body = table.tBodies[0];
  var filter = document.getElementById("filter"), status = document.getElementById("status");
  var shown = document.getElementById("shown");
  function apply() {
    var words = filter.value.trim().toLowerCase().split(/\\s+/).filter(Boolean), wanted = status.value, n = 0;
    Array.prototype.forEach.call(body.rows, function (tr) {
      var text = tr.getAttribute("data-text");
      var ok = (!wanted || tr.getAttribute("data-status") === wanted) &&
        words.every(function (w) { return text.indexOf(w) !== -1; });
      tr.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = n.toLocaleString("en-US");
  }
  filter.addEventListener("input", apply);
  status.addEventListener("change", apply);
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(body.rows, function (tr, i) { tr.setAttribute("data-order", i); });
  function sortBy(th) {
    var column = th.cellIndex, numeric = th.getAttribute("data-type") === "num";
    var now = th.getAttribute("aria-sort");
    var dir = now ? (now === "ascending" ? "descending" : "ascending") : (numeric ? "descending" : "ascending");
    Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].getAttribute("data-sort"), y = b.cells[column].getAttribute("data-sort");
      var d;
      if (x === "" || y === "") {
        d = (x === "") - (y === "");  /* empty cells last, whatever the direction */
        if (d) return d;
      } else if (numeric) {
        d = sign * (parseFloat(x) - parseFloat(y));
      } else {
        d = sign * x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
      }
      return d || (a.getAttribute("data-order") - b.getAttribute("data-order"));
    });
    rows.forEach(function (tr) { body.appendChild(tr); });
  }
  Array.prototype.forEach.call(heads, function (th) {
    if (!th.hasAttribute("data-type")) return;
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });
  apply();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
<p class="sub">{total} {what} from <code>{source}</code>. Bars: each rank's score ({scale});
the tick is the rank's threshold, green the ranks called.</p>
<section class="cards" id="statuses"><h2>status</h2>{status_cards}</section>
<section class="cards" id="ranks"><h2>called at</h2>{rank_cards}</section>
{info}
<div class="controls">
<input id="filter" type="search" placeholder="filter: id, taxon, flag…" aria-label="filter rows" autocomplete="off">
<select id="status" aria-label="status"><option value="">all statuses</option>{options}</select>
<span><span id="shown">{total}</span> of {total} shown</span>
</div>
<table id="rows">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<footer>Made by clibd {version} report. Self-contained: nothing is loaded from the network.</footer>
<script>{script}</script>
</body>
</html>
"""
