"""Label by hand: `cli.py annotate` as a real server in a subprocess, driven by a real headless
Chromium (Selenium with Debian's chromedriver) and by plain HTTP, on SQLite and PostgreSQL."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from sqlalchemy import func, select, update

from posresample import db
from posresample.schema import annotation_items, completions, labels, taggers
from tests.helpers import REPO, cli_cmd
from tests.known_truth import draw_study, write_study

HOSTILE = (
    '<script>document.body.dataset.pwned = "script"</script> "><img src=x onerror="document.body.dataset.pwned=1">'
    " \u202etxet desrever"
)  # an unterminated RIGHT-TO-LEFT OVERRIDE
SCREENSHOT = REPO / "docs" / "annotate.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sampled(engine):
    """30 candidates x 4 completions, machine-labelled; every completion's text ends in hostile markup."""
    study = draw_study(30, np.random.default_rng(7), num_samples=4)
    write_study(engine, study, study.measured)
    with db.write(engine) as conn:
        conn.execute(update(completions).values(text=completions.c.text + " " + HOSTILE))
    return engine


class Server:
    def __init__(self, db_url, annotator, *args):
        self.port = free_port()
        self.proc = subprocess.Popen(
            cli_cmd("annotate", "--db", db_url, "--annotator", annotator, "--port", str(self.port), *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # the server says where it listens once it is ready to
        match = re.search(r"open (http://\S+)", line)
        assert match, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.url = match.group(1)
        with urllib.request.urlopen(self.url, timeout=60) as r:  # with ?token=... where the server needs one
            self.csrf = re.search(r'name="csrf" content="([^"]+)"', r.read().decode()).group(1)

    def get(self, path):
        with urllib.request.urlopen(self.url.split("?")[0] + path, timeout=60) as r:
            return r.read().decode()

    def post(self, path, body, csrf=True, origin=None):
        headers = {"Content-Type": "application/json"}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        if origin:
            headers["Origin"] = origin
        request = urllib.request.Request(self.url.split("?")[0] + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=120)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        if os.environ.get("CI"):
            pytest.fail("chromium or chromedriver is missing: .ci/run installs them")
        pytest.skip("chromium and chromedriver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,800",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def human_answers(engine, name="human:ana"):
    with db.read(engine) as conn:
        return conn.execute(
            select(labels.c.completion_id, labels.c.status, labels.c.upos_name)
            .join(taggers, taggers.c.id == labels.c.tagger_id)
            .where(taggers.c.name == name)
            .order_by(labels.c.id)
        ).all()


def test_label_ten_with_the_keyboard_undo_one_and_resume_after_a_restart(sampled, db_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(db_url, "ana", "--sample", "20")
    driver = browser()
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        body = driver.find_element(By.TAG_NAME, "body")

        def answered(n):
            wait.until(lambda d: body.get_attribute("data-answered") == str(n) and body.get_attribute("data-item"))

        answered(0)
        shown = driver.find_element(By.ID, "continuation").text
        assert "<script>" in shown and 'onerror="' in shown  # the hostile text is shown as text
        assert driver.find_elements(By.CSS_SELECTOR, "#text img") == [] and body.get_attribute("data-pwned") is None
        starts = driver.execute_script(  # where each part starts: the override stays inside the continuation
            "return ['prefix', 'target', 'continuation'].map(id => "
            "document.getElementById(id).getClientRects()[0].left)"
        )
        assert starts[0] < starts[1] < starts[2], starts
        assert (
            driver.execute_script("return getComputedStyle(document.getElementById('continuation')).unicodeBidi")
            == "isolate"
        )
        keys = "nvadpnvadp"
        shown_items = []
        for i, key in enumerate(keys):
            shown_items.append(body.get_attribute("data-item"))
            body.send_keys(key)
            answered(i + 1)
        assert len(set(shown_items)) == 10  # ten different items, one after another
        body.send_keys("z")  # undo the tenth answer: its item is shown again
        answered(9)
        tenth = body.get_attribute("data-item")
        assert tenth == shown_items[-1]
        progress = driver.find_element(By.ID, "progress").text
        assert re.match(r"\d+ of 20 labelled, 1 annotator active \(9 by you\)", progress), progress
        if os.environ.get("POSRESAMPLE_SCREENSHOTS"):
            driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
        assert server.stop() == 0
    got = human_answers(sampled)
    assert len(got) == 9 and [u for _, _, u in got] == [
        "NOUN",
        "VERB",
        "ADJ",
        "DET",
        "PRON",
        "NOUN",
        "VERB",
        "ADJ",
        "DET",
    ]
    assert {s for _, s, _ in got} == {"ok"}
    again = Server(db_url, "ana", "--sample", "20")  # the restart resumes at the tenth item
    try:
        state = json.loads(again.get("api/item"))
        assert str(state["item"]["id"]) == tenth and state["progress"]["mine"] == 9
    finally:
        again.stop()


def test_two_annotators_at_once_get_disjoint_items_and_overlap_is_as_asked(sampled, db_url):
    ana, bob = Server(db_url, "ana", "--sample", "24", "--overlap", "25"), None
    try:
        bob = Server(db_url, "bob", "--sample", "24", "--overlap", "25")
        seen = {"ana": [], "bob": []}
        states = {"ana": json.loads(ana.get("api/item")), "bob": json.loads(bob.get("api/item"))}
        while any(s["item"] for s in states.values()):
            items = [s["item"]["id"] for s in states.values() if s["item"]]
            assert len(items) == len(set(items))  # never the same item on two screens at once
            for name, server in (("ana", ana), ("bob", bob)):
                if states[name]["item"]:
                    seen[name].append(states[name]["item"]["id"])
                    label = "unsure" if len(seen[name]) % 7 == 0 else "NOUN"
                    states[name] = server.post("api/answer", {"item_id": states[name]["item"]["id"], "label": label})
    finally:
        ana.stop()
        if bob:
            bob.stop()
    with db.read(sampled) as conn:
        overlap = set(conn.execute(select(annotation_items.c.id).where(annotation_items.c.overlap)).scalars())
        total = conn.execute(select(func.count()).select_from(annotation_items)).scalar_one()
    both = set(seen["ana"]) & set(seen["bob"])
    assert total == 24 and both == overlap and 0 < len(overlap) < 24  # every overlap item twice, the rest once
    assert len(seen["ana"]) + len(seen["bob"]) == 24 + len(overlap)


def test_cross_site_posts_are_refused(sampled, db_url):
    server = Server(db_url, "ana", "--sample", "5")
    try:
        item = json.loads(server.get("api/item"))["item"]["id"]
        for kwargs in ({"csrf": False}, {"origin": "http://evil.example"}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                server.post("api/answer", {"item_id": item, "label": "NOUN"}, **kwargs)
            assert refused.value.code == 403
        for body in (
            {"item_id": str(item), "label": "NOUN"},
            {"item_id": 10**9, "label": "NOUN"},
            {"item_id": item, "label": "_"},
            {"item_id": True, "label": "NOUN"},
            [item],
        ):
            with pytest.raises(urllib.error.HTTPError) as bad:  # malformed: the client's error, not a 500
                server.post("api/answer", body)
            assert bad.value.code == 400, body
        assert human_answers(sampled) == []
        assert server.post("api/answer", {"item_id": item, "label": "NOUN"})["progress"]["mine"] == 1
    finally:
        server.stop()


def test_bad_input_is_one_line_and_writes_nothing(engine, db_url, sampled):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cases = [
            (["--annotator", "Ana Smith"], "annotator name 'Ana Smith' is not"),
            (["--annotator", "ana", "--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--annotator", "ana", "--host", "0.0.0.0"], "pass --token"),
            (["--annotator", "ana", "--scan", "nosuch"], "no scan named 'nosuch'"),
        ]
        for args, message in cases:
            run = subprocess.run(
                cli_cmd("annotate", "--db", db_url, *args), capture_output=True, text=True, timeout=300
            )
            errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
            assert run.returncode in (1, 2) and len(errors) == 1 and message in errors[0], run.stderr
    from posresample.schema import jobs

    with db.write(sampled) as conn:  # a scan with no completions (nothing done yet)
        conn.execute(update(jobs).values(state="todo"))
    run = subprocess.run(
        cli_cmd("annotate", "--db", db_url, "--annotator", "ana", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "no sampled completions to label" in run.stderr
    with db.read(sampled) as conn:
        assert conn.execute(select(func.count()).select_from(annotation_items)).scalar_one() == 0
        assert (
            conn.execute(select(func.count()).select_from(taggers).where(taggers.c.name.like("human:%"))).scalar_one()
            == 0
        )


def http_status(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_hostile_requests_get_a_4xx_and_write_nothing(sampled, db_url):
    """Another annotator's item (409), a rebinding Host (400), a huge or deep body (413, 400),
    ids past 32 or 64 bits (400), a non-ASCII token (403): never a 200 that writes, never a 500."""
    ana = Server(db_url, "ana", "--sample", "6")
    bob = None
    try:
        bob = Server(db_url, "bob", "--sample", "6")
        anas = json.loads(ana.get("api/item"))["item"]["id"]
        base = bob.url.split("?")[0]
        post = {"Content-Type": "application/json", "X-CSRF-Token": bob.csrf}
        answer = json.dumps({"item_id": anas, "label": "NOUN"}).encode()
        assert http_status(base + "api/answer", answer, post) == 409  # ana holds it: bob cannot answer it
        rebound = {**post, "Host": f"rebind.example:{bob.port}", "Origin": f"http://rebind.example:{bob.port}"}
        assert http_status(base, None, {"Host": f"rebind.example:{bob.port}"}) == 400  # no page, no CSRF token
        assert http_status(base + "api/answer", answer, rebound) == 400
        assert (
            http_status(base + "api/answer", b'{"item_id": 1, "label": "NOUN", "pad": "' + b"x" * 200_000 + b'"}', post)
            == 413
        )
        assert http_status(base + "api/answer", b"[" * 2000 + b"]" * 2000, post) == 400
        for item_id in (10**30, 2**63, -1, 0):
            body = json.dumps({"item_id": item_id, "label": "NOUN"}).encode()
            assert http_status(base + "api/answer", body, post) == 400, item_id
        assert human_answers(sampled) == [] and human_answers(sampled, "human:bob") == []
    finally:
        ana.stop()
        if bob:
            bob.stop()
    guarded = Server(db_url, "cy", "--sample", "3", "--token", "s3cret")
    try:
        base = guarded.url.split("?")[0]
        assert http_status(base + "?token=s%C3%A9cret") == 403 and http_status(base + "?token=s3cret") == 200
        assert http_status(base, None, {"Cookie": "annotate_token=s\xe9cret"}) == 403
    finally:
        guarded.stop()
    run = subprocess.run(
        cli_cmd("annotate", "--db", db_url, "--annotator", "dee", "--token", "sécret"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        run.returncode == 1
        and run.stderr.strip().splitlines()[-1] == "Error: --token must be printable ASCII, without spaces at its ends"
    )
