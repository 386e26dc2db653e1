"""`clibd report`: the HTML page of a match or classify run.

Fast tests read the page back with an HTML parser (counts, escaping of hostile ids and names, thumbnails,
every output format, bad input); the slow one opens real reports (the bundled barcode example and the
README's photo demo) in Chromium through Playwright and uses the filter, the status menu and sorting.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import clibd_ok, invoke, one_error_line
from PIL import Image

from clibd_cli.classify import CLASSIFY_COLUMNS
from clibd_cli.html_report import render_report, summarise
from clibd_cli.report import HIT_COLUMNS, MATCH_COLUMNS, MATCH_HIT_COLUMNS, RowWriter, run_record
from clibd_cli.result_files import read_results

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Page(HTMLParser):
    """The parts of a report the tests look at: body rows (status, cell texts, images), counts, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict] = []
        self.counts: dict[str, dict[str, str]] = {"status": {}, "rank": {}}
        self.scripts: list[str] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._count: tuple[str, str] | None = None
        self._in_body = self._in_script = self._in_th = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append({"status": attrs.get("data-status"), "text": attrs.get("data-text"), "cells": [],
                              "images": []})
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "img" and self._in_body:
            self.rows[-1]["images"].append(attrs.get("src", ""))
        elif tag == "span" and attrs.get("class") == "count":
            key = ("status", attrs["data-status"]) if "data-status" in attrs else ("rank", attrs["data-rank"])
            self._count = key
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "th":
            self._in_th = True
            self.headings.append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "script":
            self._in_script = False
        elif tag == "th":
            self._in_th = False
        elif tag == "span":
            self._count = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._count is not None:
            self.counts[self._count[0]][self._count[1]] = data
        if self._in_script:
            self.scripts[-1] += data
        if self._in_th:
            self.headings[-1] += data


def match_row(query_id: str, status: str, rank: str, species: str = "Aus bus", score: float = 0.99, **extra) -> dict:
    names = {"order": "Diptera", "family": "Muscidae", "genus": species.split()[0], "species": species}
    called = ("order", "family", "genus", "species")[: ("", "order", "family", "genus", "species").index(rank)]
    row = {"query_id": query_id, "status": status, "rank": rank, "top_hit_id": "REF1", "top_hit_similarity": score}
    for r in ("order", "family", "genus", "species"):
        row[r] = names[r] if r in called else ""
        row[f"{r}_score"] = score
        row[f"{r}_identity"] = round(100 * score, 2)
    row.update(extra)
    return row


def write(path: Path, rows: list[dict], columns: list[str], fmt: str, info: dict | None = None,
          identity: dict | None = None) -> Path:
    """Rows written by clibd's own writer, as match and classify write them."""
    writer = RowWriter(path, fmt, columns, info=info, identity=identity)
    for row in rows:
        writer.write(row)
    writer.close()
    return path


ROWS = [match_row("Q1", "assigned", "species"), match_row("Q2", "assigned", "species", "Aus cus"),
        match_row("Q3", "rolled_up", "genus", score=0.93), match_row("Q4", "novel_candidate", "family", score=0.88),
        match_row("Q5", "no_match", "", score=0.6)]


def test_summary_counts_statuses_and_called_ranks(tmp_path):
    path = write(tmp_path / "calls.csv", ROWS, MATCH_COLUMNS, "csv")
    summary = summarise(read_results(path).rows)
    assert summary.total == 5
    assert summary.statuses == {"assigned": 2, "novel_candidate": 1, "rolled_up": 1, "no_match": 1}
    assert list(summary.ranks.items()) == [("species", 2), ("genus", 1), ("family", 1), ("none", 1)]
    out = tmp_path / "calls.html"
    result = clibd_ok("report", path, "-o", out)
    assert f"wrote {out} (5 rows)" in " ".join(result.stderr.split())
    page = Page(out.read_text())
    assert page.counts["status"] == {"assigned": "2", "novel_candidate": "1", "rolled_up": "1", "no_match": "1"}
    assert page.counts["rank"] == {"species": "2", "genus": "1", "family": "1", "none": "1"}
    assert [row["status"] for row in page.rows] == [r["status"] for r in ROWS]
    assert [row["cells"][0] for row in page.rows] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    assert page.rows[2]["cells"][1:3] == ["rolled_up", "genus Aus"]
    assert page.rows[4]["cells"][2] == "not called"


def test_every_output_format_reads_back_the_same(tmp_path):
    """CSV/TSV (with a formula-like id the writer quoted), JSON with its info block, JSONL: the same rows."""
    rows = [*ROWS, match_row("=HYPERLINK(1)", "assigned", "species")]
    info = {"clibd_version": "9.9", "thresholds": {"order": 0.85, "family": 0.87, "genus": 0.91, "species": 0.95}}
    read = {fmt: read_results(write(tmp_path / f"calls.{fmt}", rows, MATCH_COLUMNS, fmt, info=info))
            for fmt in ("csv", "tsv", "json", "jsonl")}
    for fmt, results in read.items():
        assert results.fmt == fmt and results.kind == "match"
        assert [r["query_id"] for r in results.rows] == [r["query_id"] for r in rows], fmt
        assert [float(r["species_score"]) for r in results.rows] == [r["species_score"] for r in rows], fmt
    assert read["json"].info == info and read["csv"].info == {}
    # an interrupted JSON run: no closing bracket, half a last row
    text = (tmp_path / "calls.json").read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.rindex("]")].rstrip().rsplit("\n", 1)[0] + '\n  {"query_id": "Q9", "sta')
    partial = read_results(cut)
    assert [r["query_id"] for r in partial.rows] == [r["query_id"] for r in rows[:-1]]
    assert partial.info == info


def test_run_info_and_threshold_ticks_come_from_the_run_record(tmp_path):
    identity = {"index_fingerprint": "abc123fingerprint", "thresholds": {"order": 0.85, "family": 0.88,
                                                                         "genus": 0.91, "species": 0.97}}
    path = write(tmp_path / "calls.csv", ROWS[:1], MATCH_COLUMNS, "csv", identity=identity)
    assert run_record(path).exists()
    text = render_report(read_results(path))
    assert "abc123fingerprint" in text
    # the bar is the score, the number beside it the identity (the legend once called the bar the identity)
    assert "lowered where references of other taxa share the vote, 70 to 100 %; the number beside it is that " \
           "identity" in text
    # identity bars run from 70 % to 100 %: the species threshold 0.97 sits at 90 %, the score 0.99 fills 96.7 %
    assert 'class="tick" style="left:90.0%"' in text
    assert 'style="width:96.7%"' in text
    (tmp_path / "bare.csv").write_text((tmp_path / "calls.csv").read_text())
    assert "carries no run info" in render_report(read_results(tmp_path / "bare.csv"))


def test_thresholds_that_stand_for_never_read_as_words(tmp_path):
    """A rank calibration could not call (threshold 1.01) reads 'never' in the run info and has no tick."""
    identity = {"thresholds": {"order": 0.85, "family": 0.88, "genus": 1.01, "species": 1.01}}
    text = render_report(read_results(write(tmp_path / "calls.csv", ROWS[:1], MATCH_COLUMNS, "csv",
                                            identity=identity)))
    assert "1.01" not in text and "never (no threshold reaches the target precision)" in text
    assert text.count('class="tick"') == 2  # order and family only


def test_short_read_sets_read_as_lists_not_json(tmp_path):
    """The run info showed a match's short-read thresholds as one line of raw JSON."""
    sets = [{"thresholds": {"order": 0.93, "family": 0.96, "genus": 0.96, "species": 0.974}, "window": 100,
             "below_overlap": 125}, {"thresholds": {"order": 0.91, "family": 1.01, "genus": 0.958, "species": 0.974},
                                     "window": 150, "below_overlap": 175}]
    text = render_report(read_results(write(tmp_path / "calls.csv", ROWS[:1], MATCH_COLUMNS, "csv",
                                            identity={"short_read_thresholds": sets, "overrides": {}})))
    assert '{"thresholds"' not in text and "<ol><li><dl><dt>thresholds</dt>" in text
    assert "<dt>below_overlap</dt><dd>125</dd>" in text and "<dt>window</dt><dd>150</dd>" in text
    assert "never (no threshold reaches the target precision)" in text  # 1.01 in words at this depth too


def test_hostile_ids_and_names_are_escaped(tmp_path):
    hostile_id = "<script>alert(1)</script>"
    hostile_species = 'Aus </script><img src=x onerror="alert(2)">'
    rows = [match_row(hostile_id, "assigned", "species", hostile_species, flags="<b>bold</b>,x\"y"),
            match_row("Q2", "assigned", "species")]
    path = write(tmp_path / "calls.csv", rows, MATCH_COLUMNS, "csv",
                 identity={"note": "</script><script>alert(3)</script>"})
    hits = write(tmp_path / "hits.csv", [{"query_id": hostile_id, "hit_rank": 1, "hit_id": "<i>R</i>",
                                          "similarity": 0.9, "species": hostile_species, "identity": 99.0}],
                 MATCH_HIT_COLUMNS, "csv")
    out = tmp_path / "r.html"
    clibd_ok("report", path, "--hits", hits, "-o", out)
    text = out.read_text()
    assert text.count("<script") == 1 and text.count("</script>") == 1  # only the page's own script
    assert "<img" not in text and "alert(1)" not in Page(text).scripts[0] and "<b>" not in text and "<i>R" not in text
    page = Page(text)
    assert page.rows[0]["cells"][0] == hostile_id  # shown as text, exactly
    assert hostile_species in page.rows[0]["cells"][2]
    assert hostile_species in page.rows[0]["cells"][-2] and "<i>R</i>" in page.rows[0]["cells"][-2]
    assert page.rows[0]["cells"][-1] == '<b>bold</b> x"y'
    assert hostile_species.lower() in page.rows[0]["text"]  # the filter's text is the value itself


def exif_rotated_jpeg(path: Path, colour: tuple[int, int, int]) -> Path:
    """A 200×100 JPEG whose EXIF says "rotate 90°": upright it is 100×200."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (200, 100), colour).save(path, "JPEG", exif=exif)
    return path


def test_photo_rows_get_upright_thumbnails_and_unreadable_photos_none(tmp_path):
    folder = tmp_path / "photos"
    (folder / "trap1").mkdir(parents=True)
    exif_rotated_jpeg(folder / "trap1" / "a.jpg", (200, 30, 30))
    Image.new("RGBA", (300, 300), (0, 0, 255, 128)).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = []
    for photo_id in ("trap1/a.jpg", "b.png", "broken.jpg", "elsewhere.jpg"):
        row = {**match_row(photo_id, "rolled_up", "family", score=0.5), "against": "dna", "photos": 1}
        rows.append(row)
    calls = write(tmp_path / "calls.tsv", rows, CLASSIFY_COLUMNS, "tsv",
                  identity={"thresholds": {"dna": {"order": 0.4, "family": 0.45, "genus": 1.01, "species": 1.01}}})
    hits = write(tmp_path / "hits.tsv", [{"query_id": "b.png", "hit_rank": r, "hit_id": f"R{r}", "similarity": s,
                                          "species": f"Sp {r}", "against": "dna"} for r, s in ((2, 0.4), (1, 0.5))],
                 [*HIT_COLUMNS, "against"], "tsv")
    out = tmp_path / "photos.html"
    result = clibd_ok("report", calls, "--hits", hits, "--photos", folder, "-o", out)
    assert "2 thumbnails" in result.stderr and "1 photo(s) could not be read" in " ".join(result.stderr.split())
    page = Page(out.read_text())
    assert page.headings[0] == "photo" and len(page.rows) == 4
    images = [row["images"] for row in page.rows]
    assert [len(i) for i in images] == [1, 1, 0, 0]
    decoded = [Image.open(io.BytesIO(base64.b64decode(i[0].removeprefix("data:image/jpeg;base64,"))))
               for i in images[:2]]
    assert [d.format for d in decoded] == ["JPEG", "JPEG"]
    assert decoded[0].size == (48, 96)  # EXIF-rotated upright, then fitted in 96 px
    assert decoded[1].size == (96, 96)
    red, _green, blue = decoded[0].convert("RGB").getpixel((24, 48))
    assert red > 150 and blue < 80
    # hits in hit-rank order, with similarity; the family threshold 0.45 drawn on the 0-1 photo scale
    assert page.rows[1]["cells"][-2] == "0.500 Sp 1 R1 0.400 Sp 2 R2"
    assert 'class="tick" style="left:45.0%"' in out.read_text()


def test_photo_ids_that_are_paths_need_no_photos_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exif_rotated_jpeg(tmp_path / "a.jpg", (10, 200, 10))
    row = {**match_row("a.jpg", "no_match", ""), "against": "dna", "photos": 1}
    write(tmp_path / "calls.csv", [row], CLASSIFY_COLUMNS, "csv")
    clibd_ok("report", "calls.csv")
    assert len(Page((tmp_path / "calls.html").read_text()).rows[0]["images"]) == 1


def test_manifest_runs_find_photos_by_manifest_id(tmp_path):
    (tmp_path / "pics").mkdir()
    exif_rotated_jpeg(tmp_path / "pics" / "p1.jpg", (10, 10, 200))
    manifest = tmp_path / "specimens.csv"
    manifest.write_text("processid,image_file\nBIOUG01-A01,pics/p1.jpg\nBIOUG01-A02,pics/missing.jpg\n")
    rows = [{**match_row(i, "no_match", ""), "against": "dna", "photos": 1} for i in ("BIOUG01-A01", "BIOUG01-A02")]
    calls = write(tmp_path / "calls.jsonl", rows, CLASSIFY_COLUMNS, "jsonl")
    clibd_ok("report", calls, "--manifest", manifest, "-o", tmp_path / "r.html")
    page = Page((tmp_path / "r.html").read_text())
    assert [len(row["images"]) for row in page.rows] == [1, 0]


def test_an_interrupted_csv_keeps_its_finished_rows(tmp_path):
    path = write(tmp_path / "calls.csv", ROWS, MATCH_COLUMNS, "csv")
    path.write_text(path.read_text() + "Q6,assig")
    assert [r["query_id"] for r in read_results(path).rows] == ["Q1", "Q2", "Q3", "Q4", "Q5"]


@pytest.mark.parametrize(("content", "mentions"), [
    ("name,species\nx,Aus bus\n", ("not an output of 'clibd match' or 'clibd classify'", "query_id, status")),
    ("query_id\thit_rank\thit_id\tsimilarity\tspecies\nQ1\t1\tR\t0.9\tA\n", ("is a --hits table",)),
    ("", ("is empty",)),
    ('{"info": {}, "results": []}\n', ("holds no result rows",)),
    ("query_id,status\n", ("no rank, order",)),
])
def test_bad_results_are_one_line_and_exit_2(tmp_path, content, mentions):
    path = tmp_path / "results.csv"
    path.write_text(content)
    one_error_line(invoke("report", path, "-o", tmp_path / "r.html"), str(path), *mentions)
    assert not (tmp_path / "r.html").exists()


def test_bad_hits_existing_output_and_binary_files_are_one_line(tmp_path):
    calls = write(tmp_path / "calls.csv", ROWS, MATCH_COLUMNS, "csv")
    other = write(tmp_path / "other.csv", [{"query_id": "Z9", "hit_rank": 1, "hit_id": "R", "similarity": 0.9}],
                  MATCH_HIT_COLUMNS, "csv")
    one_error_line(invoke("report", calls, "--hits", other), "none of its query ids is in the results")
    one_error_line(invoke("report", calls, "--hits", calls), "not a --hits table", "hit_rank")
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(bytes(range(256)) * 4)
    one_error_line(invoke("report", binary, "-o", tmp_path / "b.html"), "not a text file")
    one_error_line(invoke("report", calls, "--photos", tmp_path), "--photos and --manifest are for classify")
    out = tmp_path / "calls.html"
    out.write_text("keep me")
    one_error_line(invoke("report", calls), "already exists", "--force")
    assert out.read_text() == "keep me"
    one_error_line(invoke("report", calls, "-o", calls, "--force"), "is an input")
    clibd_ok("report", calls, "--force")
    assert out.read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------------------------------- in a real browser

CHROMIUM = next((p for p in (os.environ.get("CLIBD_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                   "playwright; the browser itself comes from the system's chromium package)")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium), so the report cannot be opened in a "
                    "browser")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_report(browser, path: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: problems.append(f"request {request.url}")
            if not request.url.startswith(("file:", "data:")) else None)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def visible_ids(page, column: int = 0) -> list[str]:
    return page.eval_on_selector_all(
        "#rows tbody tr:not([hidden])", f"rows => rows.map(r => r.cells[{column}].textContent.trim())")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))


@pytest.mark.slow
def test_match_report_in_chromium(browser, tmp_path):
    calls, hits, out = tmp_path / "x.csv", tmp_path / "h.csv", tmp_path / "x.html"
    clibd_ok("match", EXAMPLES / "queries.fasta", "--index", EXAMPLES / "reference.fasta", "-o", calls,
             "--hits", hits)
    clibd_ok("report", calls, "--hits", hits, "-o", out)
    rows, hit_rows = read_csv(calls), read_csv(hits)
    queries = sum(line.startswith(">") for line in (EXAMPLES / "queries.fasta").read_text().splitlines())
    page, problems = open_report(browser, out)
    assert page.locator("#rows tbody tr").count() == queries == len(rows)
    assert page.locator("#shown").text_content() == str(queries)
    # The filter: a genus name keeps the queries whose row or hits name it, and only them.
    genus = rows[0]["genus"]
    expected = {r["query_id"] for r in rows if any(genus.lower() in str(v).lower() for v in r.values())}
    expected |= {h["query_id"] for h in hit_rows if any(genus.lower() in str(v).lower() for v in h.values())}
    page.fill("#filter", genus.upper())
    assert set(visible_ids(page)) == expected and 0 < len(expected) < queries
    assert page.locator("#shown").text_content() == str(len(expected))
    page.fill("#filter", "")
    page.select_option("#status", "novel_candidate")
    assert set(visible_ids(page)) == {r["query_id"] for r in rows if r["status"] == "novel_candidate"}
    page.select_option("#status", "")
    # Sorting: by id (text, ascending then descending), by species identity (numbers, highest first).
    ids = [r["query_id"] for r in rows]
    page.click("th:text-is('query')")
    assert visible_ids(page) == sorted(ids)
    page.click("th:text-is('query')")
    assert visible_ids(page) == sorted(ids, reverse=True)
    page.click("th:text-is('species')")
    scores = {r["query_id"]: float(r["species_score"]) for r in rows}
    shown = visible_ids(page)
    assert [scores[i] for i in shown] == sorted(scores.values(), reverse=True)
    assert page.get_attribute("th:text-is('species')", "aria-sort") == "descending"
    page.screenshot(path=str(tmp_path / "match-report.png"), full_page=True)
    assert problems == []


@pytest.mark.slow
def test_photo_demo_report_in_chromium(browser, tmp_path, monkeypatch):
    """README's photo demo (build-index, calibrate, classify --hits), then its report with thumbnails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, index = EXAMPLES / "demo-model", tmp_path / "demo_index"
    clibd_ok("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", model, "-o", index)
    clibd_ok("calibrate", "--index", index, "--model", model, "--images", EXAMPLES / "demo-labelled-photos.tsv")
    calls, hits, out = tmp_path / "calls.csv", tmp_path / "hits.tsv", tmp_path / "photos.html"
    clibd_ok("classify", EXAMPLES / "photos", "--model", model, "--index", index, "--hits", hits, "-o", calls)
    clibd_ok("report", calls, "--hits", hits, "--photos", EXAMPLES / "photos", "-o", out)
    rows = read_csv(calls)
    photos = sorted(p.name for p in (EXAMPLES / "photos").iterdir() if p.suffix == ".jpg")
    page, problems = open_report(browser, out)
    assert page.locator("#rows tbody tr").count() == len(photos) == len(rows)
    # every row has its photo, decoded by the browser (the page's policy allows data: images only)
    widths = page.eval_on_selector_all("#rows tbody img.thumb", "images => images.map(i => i.naturalWidth)")
    assert len(widths) == len(photos) and min(widths) > 0 and max(widths) <= 96
    first = photos[0]
    page.fill("#filter", first.removesuffix(".jpg"))
    assert visible_ids(page, column=1) == [first]
    page.fill("#filter", "")
    page.click("th:text-is('query')")
    page.click("th:text-is('query')")
    assert visible_ids(page, column=1) == sorted(photos, reverse=True)
    page.screenshot(path=str(tmp_path / "photo-report.png"))
    assert json.dumps(problems) == "[]"
