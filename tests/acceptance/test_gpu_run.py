"""bench/gpu_run.sh, the one-call GPU plan, in its CPU mode (DEVICE=cpu CONFIG=tiny): caps that fit
the 540 s budget, a log per step flushed as it goes, and a run cut short that keeps what finished."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, tiny_scan_options

SCRIPT = str(REPO / "bench" / "gpu_run.sh")
STEPS = [
    "setup",
    "sampler_peaked",
    "tests",
    "sampler_flat",
    "scan",
    "invariance_peaked",
    "invariance_flat",
    "tiers",
    "inductor",
]
LOGS = {
    "setup": "machine.log",
    "sampler_peaked": "sampler_peaked.log",
    "tests": "tests.log",
    "sampler_flat": "sampler_flat.log",
    "scan": "scan.log",
    "invariance_peaked": "invariance.log",
    "invariance_flat": "invariance.log",
    "tiers": "tiers.log",
    "inductor": "inductor.log",
}


def cpu_env(out, **extra):
    ewt = REPO.parent / "shared" / "data" / "ud_english_ewt"
    return {
        **os.environ,
        "DEVICE": "cpu",
        "CONFIG": "tiny",
        "PY": sys.executable,
        "NO_WHEELS": "1",
        "OUT": str(out),
        "SCALE": "0.05",
        "MIN_CAP": "15",
        "POSRESAMPLE_EWT": str(ewt),
        # a step its cap kills while inductor compiles leaves a half-written .so in the cache ("invalid
        # ELF header" for the next user of /tmp/torchinductor_$USER): the tests compile into their own
        "TORCHINDUCTOR_CACHE_DIR": f"{out}-inductor",
        **extra,
    }


def test_the_plan_fits_one_device_call_and_runs_the_headline_first():
    plan = subprocess.run(["bash", SCRIPT, "--plan"], capture_output=True, text=True, check=True).stdout
    caps = dict(re.findall(r"^  (\w+)\s+cap\s+(\d+) s", plan, re.M))
    assert list(caps)[:3] == ["setup", "sampler_peaked", "profile"] and set(STEPS) <= set(caps)
    total = int(re.search(r"total\s+(\d+) s", plan).group(1))
    assert total == sum(map(int, caps.values())) and total < 8 * 60  # within the 540 s budget


def test_one_step_writes_its_log_and_the_index(tmp_path):
    # caps a loaded machine meets (a step ends when its command does: no cost on a quiet one); 15 s could
    # pass for a Python start with torch and pytest only on a quiet machine
    run = subprocess.run(
        ["bash", SCRIPT, "tests"], env=cpu_env(tmp_path, MIN_CAP="120"), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    index = (tmp_path / "machine.log").read_text()
    assert re.search(r"== setup: exit 0", index) and re.search(r"== tests: exit 0", index)
    assert "python 3." in index and "torch" in index  # the versions lead the index
    assert "skipped" in (tmp_path / "tests.log").read_text()  # tests/gpu on a machine without CUDA


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_run_cut_mid_way_keeps_the_finished_logs_and_every_step_writes_one(tmp_path, shared_ewt):
    first = tmp_path / "cut"
    # caps the steps before the cut meet: the flat step prints its generate row only after every
    # variant's warm-up, and a CI run once found the 15 s floor too short for that
    proc = subprocess.Popen(
        ["bash", SCRIPT],
        env=cpu_env(first, MIN_CAP="30"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    while not (first / "scan.log").exists():  # the fifth step has started: cut the whole run there
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its scan step"
        time.sleep(0.2)  # polling for the file, not a synchronisation
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    index = (first / "machine.log").read_text()
    for step in ("setup", "sampler_peaked", "tests", "sampler_flat"):  # finished before the cut: intact
        assert re.search(rf"== {step}: exit \d+", index), step
    table = (first / "sampler_peaked.log").read_text()
    assert "| Sampler decode=fast" in table and re.search(r"# target .*: (met|missed)$", table, re.M)
    assert "| per-prefix generate" in (first / "sampler_flat.log").read_text()
    assert not (first / "tiers.log").exists()

    rest = tmp_path / "rest"
    later = STEPS[4:]
    # caps a loaded 2-core machine can meet: the scan bench trains a 32k tokenizer before its first batch
    run = subprocess.run(
        ["bash", SCRIPT, *later], env=cpu_env(rest, MIN_CAP="45"), capture_output=True, text=True, timeout=900
    )
    index = (rest / "machine.log").read_text()
    for step in later:
        assert re.search(rf"== {step}: exit \d+", index), step
        assert re.search(r"^# ", (rest / LOGS[step]).read_text(), re.M), step  # each bench's header line, at least
    assert re.search(r"^[1-9]\d* sentences", (rest / "scan.log").read_text(), re.M)  # one batch at least
    assert run.returncode in (0, 1)


HEAVY = ("spacy", "thinc", "matplotlib", "flask", "starlette", "uvicorn", "werkzeug", "selenium")


def imported_by(args, env=None):
    """The top-level modules a `cli.py` command imports while it runs (printed at exit)."""
    code = (
        "import atexit, sys, runpy\n"
        "atexit.register(lambda: print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules}))))\n"
        f"sys.argv = ['cli.py', *{list(args)!r}]\n"
        "runpy.run_path('cli.py', run_name='__main__')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    line = next(line for line in run.stdout.splitlines() if line.startswith("MODULES "))
    return run, set(line.split()[1:])


def test_worker_scan_and_the_benches_import_no_tagger_plotting_or_web_stack(
    tmp_path, tiny_dir, tiny_probe, sample_conllu
):
    """The GPU image has neither spaCy nor a web framework: the commands the GPU run uses must not
    need them, nor pull them in by accident."""
    from posresample import db
    from tests.helpers import seed_jobs

    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    seed_jobs(engine, 3, num_samples=2, max_new_tokens=2)
    engine.dispose()
    run, modules = imported_by(["worker", "--db", url, "--fake-sampler", "--no-progress"])
    assert run.returncode == 0, run.stderr
    assert not modules & set(HEAVY), modules & set(HEAVY)
    run, modules = imported_by(
        [
            "scan",
            "--db",
            f"sqlite:///{tmp_path / 's.db'}",
            *tiny_scan_options(tiny_dir, tiny_probe, sample_conllu),
            "--no-progress",
            "--max-prefixes",
            "3",
        ]
    )
    assert run.returncode == 0, run.stderr
    assert not modules & set(HEAVY), modules & set(HEAVY)
    code = (
        "import sys; sys.path.insert(0, 'bench')\n"
        "import sampler_speed, scan_speed, batch_invariance, sampling_tiers, profile_decode\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    benches = set(
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "torch" in benches and not benches & set(HEAVY)
