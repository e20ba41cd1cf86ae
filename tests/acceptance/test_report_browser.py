"""The report page in a real headless browser (Debian's chromium): summary table, plots decoded,
a candidate row that opens. .ci/run installs chromium; elsewhere the test skips without it."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from posresample.analyze import analyze
from posresample.report import write_report
from tests.helpers import seed_labelled
from tests.integration.test_analyze import CLASSES, known


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("chromium is not installed")
    return found


def test_the_report_page_renders_in_a_browser(sqlite_url, tmp_path):
    from posresample import db

    browser = chromium()
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    truth, truth_small = known(n=12)
    seed_labelled(engine, truth, np.asarray(truth_small), CLASSES)
    a = analyze(engine, min_labelled=20)
    page = write_report(a, str(tmp_path / "report"))["html"]
    first = a.rows[0]["candidate_id"]
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", f"file://{page}#open={first}"], capture_output=True, text=True, timeout=600).stdout
    assert '<table id="summary">' in dom and "TV(empirical, probe)" in dom
    assert 'data-images-loaded="4"' in dom  # every plot decoded
    assert len(re.findall(r'<tr class="row" data-id="[0-9]+"', dom)) == 12
    detail = re.search(r'<tr class="detail">(.*?)</td></tr>\s*<tr class="row"', dom, re.S)
    assert detail and "<mark>" in detail.group(1) and 'class="bar emp"' in detail.group(1)
