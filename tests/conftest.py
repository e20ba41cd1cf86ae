"""Shared fixtures: a tiny random Gemma 2 with a tokenizer trained here, a probe, SQLite and PostgreSQL.

PostgreSQL: POSRESAMPLE_TEST_PG names a server URL (`.ci/run` starts one and sets it); without it
the session starts a throw-away cluster with scripts/pg-test-server. With CI=true the PostgreSQL
tests fail instead of skipping when no server can be had.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_EWT = REPO.parent / "shared" / "data" / "ud_english_ewt"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from posresample import standins

    return standins.build_assets(str(tmp_path_factory.mktemp("tiny") / "tiny-gemma2"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    import torch

    from posresample.lm import load_model

    return load_model(tiny_dir, torch.device("cpu"))


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from posresample.lm import load_tokenizer

    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def tiny_probe(tiny_dir, tmp_path_factory) -> str:
    from posresample.demo import build_demo_probe

    return build_demo_probe(tiny_dir, str(tmp_path_factory.mktemp("probe") / "probe.joblib"))


@pytest.fixture(scope="session")
def sample_conllu() -> str:
    from posresample.standins import sample_conllu_path

    return sample_conllu_path()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """The URL of a PostgreSQL server's maintenance database."""
    url = os.environ.get("POSRESAMPLE_TEST_PG")
    if url:
        yield url
        return
    folder = tmp_path_factory.mktemp("pg")
    os.chmod(folder, 0o777)
    for parent in list(folder.parents)[:3]:  # the postgres user must reach the folder
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    script = REPO / "scripts" / "pg-test-server"
    proc = subprocess.run([str(script), "start", str(folder), str(_free_port())], capture_output=True, text=True)
    if proc.returncode != 0:
        message = f"cannot start PostgreSQL: {proc.stderr.strip() or proc.stdout.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield proc.stdout.strip()
    finally:
        subprocess.run([str(script), "stop", str(folder)], capture_output=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the test server for one test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request):
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    from posresample import db

    eng = db.make_engine(db_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def shared_ewt() -> Path:
    """UD English-EWT from ../shared (CC BY-SA 4.0); tests using it skip where ../shared is absent."""
    if not (SHARED_EWT / "en_ewt-ud-dev.conllu").is_file():
        pytest.skip("../shared/data/ud_english_ewt is absent")
    return SHARED_EWT


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory) -> str:
    """A spaCy UPOS tagger trained in the session on the bundled sample (a few seconds): its folder."""
    from posresample.standins import sample_conllu_path
    from posresample.train_tagger import run_train_tagger

    out = str(tmp_path_factory.mktemp("tagger") / "sample-tagger")
    run_train_tagger(sample_conllu_path(), out, max_steps=40, max_epochs=50, progress=False)
    return out
