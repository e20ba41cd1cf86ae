"""The report page in a real headless browser (Debian's chromium): the compressed rows inflate and
page, plots decode, a row opens with its examples, and untrusted text stays text: a sentence with
`<!--<script>` and a distilled probe's sidecar full of markup. .ci/run installs chromium; elsewhere
the test skips without it."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from sqlalchemy import update

from posresample import db
from posresample.analyze import run_analyze
from posresample.report import ReportError, load_distill_sidecar, write_report
from posresample.schema import candidates
from tests.known_truth import draw_study, write_study

HOSTILE = (
    '<!--<script>document.body.dataset.pwned="comment"</script> "><img src=x onerror="document.body.dataset.pwned=1">'
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("chromium is not installed")
    return found


def dom(page: str, fragment: str = "") -> str:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"file://{page}{fragment}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout


def sidecar(tmp_path, **over) -> str:
    score = {m: {"mean": 0.1, "ci95": [0.05, 0.2]} for m in ("kl", "tv", "brier", "accuracy_true_label")}
    meta = {
        "kind": HOSTILE,
        "training_data": {"scan": HOSTILE, "tagger": HOSTILE, "candidates": 150},
        "cross_validation": {"folds": 5, "split_by": HOSTILE, "layers": [{"layer": 12, "scores": {HOSTILE: score}}]},
    }
    meta.update(over)
    path = tmp_path / "distilled.json"
    path.write_text(json.dumps(meta))
    return str(path)


@pytest.fixture
def hostile_report(sqlite_url, tmp_path):
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    study = draw_study(230, np.random.default_rng(1))
    write_study(engine, study, study.measured)
    with db.write(engine) as conn:  # one candidate's sentence is hostile markup
        conn.execute(update(candidates).where(candidates.c.dataset_idx == 3).values(sentence_text=HOSTILE))
    a = run_analyze(engine, min_labelled=20)
    paths = write_report(a, str(tmp_path / "report"), load_distill_sidecar(sidecar(tmp_path)))
    return a, paths


def test_the_report_page_renders_pages_and_opens_a_row(hostile_report):
    a, paths = hostile_report
    first = sorted(a.rows, key=lambda r: r["q_value"])[150]["candidate_id"]  # on the second page
    html = dom(paths["html"], f"#open={first}")
    assert 'data-ready="1"' in html and 'data-rows-loaded="230"' in html and f'data-opened="{first}"' in html
    assert 'data-images-loaded="6"' in html  # every plot decoded
    assert len(re.findall(r'<tr class="row" data-id="[0-9]+"', html)) == 100  # one page of the table
    assert "rows 101-200 of 230" in html
    detail = re.search(r'<tr class="detail">(.*?)</td></tr>\s*<tr class="row"', html, re.S)
    assert detail and "<mark>" in detail.group(1) and 'class="bar cor"' in detail.group(1)
    assert "Of 230 uncertain tokens" in html and '<table id="verdict">' in html


def test_untrusted_text_stays_text(hostile_report):
    a, paths = hostile_report
    page = open(paths["html"], encoding="utf-8").read()
    assert "<!--" not in page.split('<script id="rows"')[1]  # the data blocks hold base64 only
    hostile = next(r["candidate_id"] for r in a.rows if r["sentence_text"] == HOSTILE)
    html = dom(paths["html"], f"#open={hostile}")
    assert "pwned" not in html.split("<body")[1].split(">")[0]  # neither script nor handler ran
    assert 'data-rows-loaded="230"' in html  # `<!--<script>` did not stop the page's script
    assert html.count("&lt;!--&lt;script&gt;") >= 2  # shown as text: the sentence, the distill section's fields
    assert '<img src="x"' not in html and "<img src=x" not in html


def test_a_bad_distill_sidecar_is_one_line_and_leaves_no_report(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ReportError, match="is not JSON"):
        load_distill_sidecar(str(tmp_path / "empty.json"))
    with pytest.raises(ReportError, match="layer entry"):
        load_distill_sidecar(
            sidecar(
                tmp_path,
                cross_validation={"folds": 5, "split_by": "x", "layers": [{"layer": "<b>12</b>", "scores": {}}]},
            )
        )
    with pytest.raises(ReportError, match="folds"):
        load_distill_sidecar(sidecar(tmp_path, cross_validation={"folds": "<script>", "split_by": "x", "layers": []}))
