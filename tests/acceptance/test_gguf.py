"""--model FILE.gguf on bad input: one line `Error:`, exit 1, no database and nothing in the cache.

The real model (Gemma 3 270M from the registry's GGUF packages) is tests/acceptance/test_real_model.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, cli_cmd


@pytest.fixture
def env(tmp_path) -> dict:
    return dict(os.environ, POSRESAMPLE_CACHE=str(tmp_path / "cache"))


def scan_with(model: str, probe: str, dataset: str, tmp_path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(
            "scan",
            "--probe",
            probe,
            "--model",
            model,
            "--dataset",
            dataset,
            "--db",
            f"sqlite:///{tmp_path / 'out.db'}",
            "--no-progress",
        ),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def assert_refused(proc: subprocess.CompletedProcess, tmp_path, *phrases: str) -> None:
    errors = [
        line for line in proc.stderr.strip().splitlines() if not line[:8].replace(":", "").isdigit()
    ]  # not log lines
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert not (tmp_path / "out.db").exists()
    converted = (
        [p for p in (tmp_path / "cache" / "gguf").glob("*") if not p.name.endswith(".lock")]
        if (tmp_path / "cache" / "gguf").exists()
        else []
    )
    assert converted == []  # no folder, complete or half-written


def test_a_text_file_named_gguf(tmp_path, env, tiny_probe, sample_conllu):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model\n")
    assert_refused(scan_with(str(fake), tiny_probe, sample_conllu, tmp_path, env), tmp_path, "not a GGUF file")


def test_a_missing_gguf(tmp_path, env, tiny_probe, sample_conllu):
    assert_refused(
        scan_with(str(tmp_path / "nope.gguf"), tiny_probe, sample_conllu, tmp_path, env), tmp_path, "no such GGUF file"
    )


def test_a_truncated_gguf(tmp_path, env, tiny_probe, sample_conllu):
    pytest.importorskip("gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 40)
    assert_refused(
        scan_with(str(cut), tiny_probe, sample_conllu, tmp_path, env),
        tmp_path,
        "cannot load model",
        "truncated or corrupt GGUF file",
    )


def test_a_gguf_of_an_architecture_transformers_cannot_load(tmp_path, env, tiny_probe, sample_conllu):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "foo.gguf"
    writer = gguf.GGUFWriter(str(path), "foo")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_refused(
        scan_with(str(path), tiny_probe, sample_conllu, tmp_path, env),
        tmp_path,
        "cannot load model",
        "architecture foo",
    )


def test_the_extra_missing_says_what_to_install(tmp_path, env, tiny_probe, sample_conllu):
    """Without the gguf package (hidden from this process), a valid-looking file asks for the extra."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    code = (
        "import sys; sys.modules['gguf'] = None; sys.argv = ['cli.py'] + sys.argv[1:]; "
        "from posresample.cli import main; main()"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "scan",
            "--probe",
            tiny_probe,
            "--model",
            str(path),
            "--dataset",
            sample_conllu,
            "--db",
            f"sqlite:///{tmp_path / 'out.db'}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
    )
    assert_refused(proc, tmp_path, "needs gguf", "pip install 'posresample[gguf]'")


def test_worker_model_must_be_a_gguf_file(tmp_path, env):
    from posresample import db

    url = f"sqlite:///{tmp_path / 'q.db'}"
    db.upgrade(db.make_engine(url))
    proc = subprocess.run(
        cli_cmd("worker", "--db", url, "--model", "some/folder", "--no-progress"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "Error: --model some/folder: expected a .gguf file (other models are named by the scan)"
    ]


def test_a_reference_this_host_has_not_converted_asks_for_the_file(tmp_path, monkeypatch):
    from posresample.errors import ModelError
    from posresample.lm import load_tokenizer

    monkeypatch.setenv("POSRESAMPLE_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="not converted on this host .* pass --model with the same .gguf file"):
        load_tokenizer("gguf:sha256:" + "ab" * 32)


def test_two_processes_converting_at_once_share_one_folder(tmp_path):
    """The first load converts under a file lock into a temporary folder renamed into place: a
    second process waits, then finds it complete (the conversion here is a stand-in that writes
    slowly; the real one is checked in the real-model tests)."""
    script = """
import sys, time, os
from posresample import gguf_cache
def slow(source, ref, folder):
    tmp = folder + '.tmp-' + str(os.getpid())
    os.makedirs(tmp)
    for i in range(5):
        open(os.path.join(tmp, f'part{i}'), 'w').write(str(os.getpid()))
        time.sleep(0.05)
    open(os.path.join(tmp, gguf_cache.MARKER), 'w').write('{}')
    os.replace(tmp, folder)
    print('converted', flush=True)
gguf_cache._convert = slow
gguf_cache._check_extra = lambda: None
ref = gguf_cache.ref_for(sys.argv[1])
print(gguf_cache.converted_folder(ref), flush=True)
"""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + os.urandom(64))
    env = dict(os.environ, POSRESAMPLE_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(model)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(out.count("converted") for out in outs) == 1  # one converted, the others waited and read
    folders = {out[-1] for out in outs}
    assert len(folders) == 1
    folder = folders.pop()
    assert sorted(os.listdir(folder)) == sorted([f"part{i}" for i in range(5)] + ["posresample-gguf.json"])
    assert len({open(os.path.join(folder, f"part{i}")).read() for i in range(5)}) == 1  # one writer's files
