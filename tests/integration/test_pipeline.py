"""scan -> worker -> export on the tiny model, against SQLite and PostgreSQL."""

import json

import pytest
import torch
import transformers
from sqlalchemy import func, select

from posresample import db, scan_store
from posresample.config import GenerationParams
from posresample.data import UPOS_NAMES
from posresample.errors import ConfigError
from posresample.export import run_export
from posresample.scan import run_scan
from posresample.schema import candidates, completions, jobs, scans, workers
from tests.helpers import LAYER, NUM_SAMPLES, run_tiny_worker, scan_options


def table(engine, tbl, *cols, order=None):
    with db.read(engine) as conn:
        return conn.execute(select(*[tbl.c[c] for c in cols]).order_by(*(order or [tbl.c.id]))).all()


def test_scan_stores_candidates_with_metadata(engine, tiny_dir, tiny_probe, sample_conllu, tokenizer):
    result = run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu), progress=False)
    assert result.candidates > 0 and result.added == result.candidates
    with db.read(engine) as conn:
        row = conn.execute(select(candidates).order_by(candidates.c.id)).mappings().first()
        scan = conn.execute(select(scans)).mappings().one()
        n_jobs = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
    assert n_jobs == result.candidates
    assert row["prefix_token_ids"][0] == tokenizer.bos_token_id
    assert row["prefix_token_ids"][row["target_position"]] == row["target_token_id"]
    assert len(row["prefix_token_ids"]) == row["target_position"] + 1
    assert len(row["probe_probs"]) == len(scan["probe_classes"])
    assert abs(sum(row["probe_probs"]) - 1) < 1e-6 and row["probe_max_prob"] == max(row["probe_probs"])
    assert row["probe_max_prob"] < 0.95
    assert scan["probe_classes"][row["probe_probs"].index(max(row["probe_probs"]))] == row["probe_pred"]
    assert UPOS_NAMES[row["true_label"]] == row["true_label_name"]
    assert row["true_label"] not in (4, 13, 15)
    assert scan["sentences_done"] == scan["sentences_total"] == 24


def test_rescan_adds_nothing_and_resumes_after_interruption(engine, tiny_dir, tiny_probe, sample_conllu, monkeypatch):
    opts = scan_options(tiny_dir, tiny_probe, sample_conllu)
    full = run_scan(engine, opts, progress=False).candidates
    assert run_scan(engine, opts, progress=False).added == 0

    other = scan_options(tiny_dir, tiny_probe, sample_conllu, name="interrupted")
    real, calls = scan_store.save_scan_batch, []

    def crash_on_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(scan_store, "save_scan_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_scan(engine, other, progress=False)
    monkeypatch.setattr(scan_store, "save_scan_batch", real)
    with db.read(engine) as conn:
        assert conn.execute(select(scans.c.sentences_done).where(scans.c.name == "interrupted")).scalar() == 10
    resumed = run_scan(engine, other, progress=False)
    assert resumed.candidates == full
    with db.read(engine) as conn:
        per_scan = dict(
            conn.execute(
                select(scans.c.name, func.count(candidates.c.id)).join(candidates).group_by(scans.c.name)
            ).all()
        )
    assert per_scan == {"t": full, "interrupted": full}


def test_max_prefixes_stops_and_a_larger_limit_continues(engine, tiny_dir, tiny_probe, sample_conllu):
    first = run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=7), progress=False)
    assert first.candidates == 7
    more = run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=20), progress=False)
    assert more.candidates == 20
    full = run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu), progress=False)
    fresh = run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, name="fresh"), progress=False)
    assert full.candidates == fresh.candidates


def test_same_name_other_config_is_refused_and_writes_nothing(engine, tiny_dir, tiny_probe, sample_conllu):
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu), progress=False)
    before = table(engine, candidates, "id")
    with pytest.raises(ConfigError, match="threshold: 0.95 -> 0.5"):
        run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, threshold=0.5), progress=False)
    assert table(engine, candidates, "id") == before


def test_new_generation_params_queue_the_same_candidates_again(engine, tiny_dir, tiny_probe, sample_conllu):
    opts = scan_options(tiny_dir, tiny_probe, sample_conllu)
    n = run_scan(engine, opts, progress=False).candidates
    hot = GenerationParams(model=tiny_dir, temperature=1.0, num_samples=NUM_SAMPLES, max_new_tokens=6)
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, params=hot), progress=False)
    with db.read(engine) as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 2 * n


def test_worker_and_export_end_to_end(engine, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer, tmp_path):
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=15), progress=False)
    w = run_tiny_worker(engine, tiny_model, tokenizer)
    assert w.jobs_done == 15
    with db.read(engine) as conn:
        assert conn.execute(select(func.count()).select_from(completions)).scalar_one() == 15 * NUM_SAMPLES
        assert {s for (s,) in conn.execute(select(jobs.c.state).distinct())} == {"done"}

    out = tmp_path / "out.jsonl"
    meta = run_export(engine, str(out), progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert set(header) == {"metadata"} and meta["counts"]["records"] == len(records) == 15
    m = header["metadata"]
    for key in (
        "model",
        "layer",
        "dataset",
        "split",
        "probe_path",
        "probe_sha256",
        "probe_classes",
        "threshold",
        "excluded_labels",
        "generation_params",
        "package_versions",
        "samplers",
        "counts",
    ):
        assert key in m, key
    # How the samples were drawn is on the worker row that each done job names, and in the header.
    with db.read(engine) as conn:
        described = (
            conn.execute(select(workers.c.sampler).join(jobs, jobs.c.last_worker == workers.c.id).distinct())
            .scalars()
            .all()
        )
    assert described == [
        {
            tiny_dir: {
                "decode": "hf",
                "compile": "off",
                "dtype": "float32",
                "device": "cpu",
                "attn": "eager",
                "prefilter": 256,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        }
    ]
    assert m["samplers"] == [{"jobs": 15, "sampler": described[0][tiny_dir]}]
    assert (
        m["layer"] == LAYER and m["excluded_labels"] == ["_", "SYM", "INTJ"] and m["generation_params"]["top_k"] is None
    )
    assert m["format"] == "posresample.export/2"
    check_records(engine, records, m)


def check_records(engine, records, meta):
    with db.read(engine) as conn:
        cand = {r["id"]: r for r in conn.execute(select(candidates)).mappings()}
    for rec in records:
        assert {"dataset_idx", "prefix", "sentence_text", "generation_params", "completions"} <= set(rec)
        assert {
            "text",
            "token_ids",
            "target_position",
            "target_token",
            "true_label",
            "probe_probs",
            "probe_pred",
        } <= set(rec["prefix"])
        assert {"model", "layer", "temperature", "top_p", "max_new_tokens", "num_samples", "seed"} <= set(
            rec["generation_params"]
        )
        c = cand[rec["candidate_id"]]
        p = rec["prefix"]
        assert rec["dataset_idx"] == c["dataset_idx"] and rec["sentence_text"] == c["sentence_text"]
        assert (p["text"], p["token_ids"], p["target_position"], p["target_token"]) == (
            c["prefix_text"],
            c["prefix_token_ids"],
            c["target_position"],
            c["target_token"],
        )
        assert (p["true_label"], p["probe_pred_id"]) == (c["true_label"], c["probe_pred"])
        assert (p["true_label_name"], p["probe_pred"]) == (UPOS_NAMES[c["true_label"]], UPOS_NAMES[c["probe_pred"]])
        assert p["probe_probs"] == pytest.approx(c["probe_probs"])
        assert rec["generation_params"]["num_samples"] == NUM_SAMPLES == len(rec["completions"])
        assert rec["generation_params"]["layer"] == meta["layer"] and rec["generation_params"]["seed"] == 123
        for comp in rec["completions"]:
            assert set(comp) >= {"text", "token_ids"} and 1 <= len(comp["token_ids"]) <= 6
            assert comp["finish_reason"] in ("eos", "length") and comp["num_tokens"] == len(comp["token_ids"])


def test_completions_are_queryable_with_sql_json(engine, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer):
    from sqlalchemy import text

    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=3), progress=False)
    run_tiny_worker(engine, tiny_model, tokenizer)
    each = "json_each(c.token_ids)" if engine.dialect.name == "sqlite" else "jsonb_array_elements(c.token_ids)"
    sql = f"select count(*) from completions c, {each}"
    with db.read(engine) as conn:
        tokens = conn.execute(text(sql)).scalar_one()
        expected = conn.execute(text("select sum(num_tokens) from completions")).scalar_one()
    assert tokens == expected > 0


def test_the_sql_examples_in_the_docs_run(
    engine, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer, tiny_tagger
):
    """docs/sql.md: its first sql block is for SQLite, its second for PostgreSQL; every statement runs."""
    import re
    from collections import Counter

    from posresample.label import LabelOptions, run_label
    from posresample.schema import labels
    from tests.helpers import REPO

    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=3), progress=False)
    run_tiny_worker(engine, tiny_model, tokenizer)
    run_label(engine, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False))
    from posresample import annotate, train_tagger
    from posresample.tagger import load_tagger

    annotate.build_queue(engine, 1, 1, sample=6, overlap=0.0)  # a person labels a few of them
    person = annotate.register_annotator(engine, "ana")
    for item_id in range(1, 7):
        annotate.answer(engine, item_id, person, 0, "ok")
    tagger = load_tagger(f"spacy:{tiny_tagger}")  # and a confusion is stored with the tagger
    _accuracy, confusion = train_tagger.evaluate_tagger(tagger, sample_conllu, "validation")
    from posresample import label_store

    label_store.set_confusion(engine, label_store.register_tagger(engine, tagger.identity()), confusion.to_json())
    blocks = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "sql.md").read_text(encoding="utf-8"), re.S)
    statements = [s.strip() for s in blocks[0 if engine.dialect.name == "sqlite" else 1].split(";") if s.strip()]
    assert len(statements) >= 4
    escape = (lambda s: s.replace("%", "%%")) if engine.dialect.name == "postgresql" else (lambda s: s)  # psycopg's %
    with db.read(engine) as conn:
        results = {s: conn.exec_driver_sql(escape(s)).fetchall() for s in statements}
    # Every example finds rows, but the live-worker query (the worker has stopped) and the disagreements,
    # checked against Python instead.
    assert [
        s for s, rows in results.items() if not rows and "stopped_at is null" not in s and "disagrees" not in s
    ] == []
    with db.read(engine) as conn:
        per_candidate = {}
        for cid, upos in conn.execute(
            select(jobs.c.candidate_id, labels.c.upos_name)
            .join(completions, completions.c.job_id == jobs.c.id)
            .join(labels, labels.c.completion_id == completions.c.id)
            .where(labels.c.status == "ok")
        ):
            per_candidate.setdefault(cid, Counter())[upos] += 1
        preds = dict(conn.execute(select(candidates.c.id, candidates.c.probe_pred_name)).all())
    majority = {cid: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for cid, c in per_candidate.items()}
    disagree = next(rows for s, rows in results.items() if "disagrees" in s)
    assert {row[0] for row in disagree} == {cid for cid, m in majority.items() if m != preds[cid]}
    provenance = next(rows for s, rows in results.items() if "decode" in s)
    assert {(row[-2], row[-1]) for row in provenance} == {("hf", "float32")}
    # the probe's probability for its own prediction: one row, equal to the stored max probability
    [own] = next(rows for s, rows in results.items() if "its own prediction" in s)
    with db.read(engine) as conn:
        name, top = conn.execute(
            select(candidates.c.probe_pred_name, candidates.c.probe_max_prob).where(candidates.c.id == 1)
        ).one()
    assert (own[0], own[1]) == (1, name) and float(own[2]) == pytest.approx(top)


def test_export_streams_zst_and_the_same_records(
    engine, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer, tmp_path
):
    import zstandard

    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=4), progress=False)
    run_tiny_worker(engine, tiny_model, tokenizer)
    run_export(engine, str(tmp_path / "a.jsonl"), progress=False)
    run_export(engine, str(tmp_path / "a.jsonl.zst"), progress=False)
    plain = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()[1:]
    packed = zstandard.ZstdDecompressor().decompress((tmp_path / "a.jsonl.zst").read_bytes(), max_output_size=1 << 26)
    assert packed.decode().splitlines()[1:] == plain
    assert not list(tmp_path.glob("*.partial"))


def test_a_limit_inside_already_stored_sentences_never_spins(engine, tiny_dir, tiny_probe, sample_conllu, monkeypatch):
    """A reset progress counter and a larger --max-prefixes used to rescore one sentence forever."""
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=20), progress=False)
    with db.write(engine) as conn:
        conn.execute(scans.update().values(sentences_done=0))
    real, calls = scan_store.save_scan_batch, []

    def bounded(*args, **kw):
        calls.append(1)
        assert len(calls) < 50, "the scan is not making progress"
        return real(*args, **kw)

    monkeypatch.setattr(scan_store, "save_scan_batch", bounded)
    assert (
        run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=25), progress=False).candidates
        == 25
    )


def test_progress_counts_candidates_against_the_limit(engine, tiny_dir, tiny_probe, sample_conllu, capsys):
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=9), progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "9/9" in last and "cand" in last and "sentences" in last, last


def test_a_scan_resumed_in_another_dtype_is_refused(engine, tiny_dir, tiny_probe, sample_conllu, monkeypatch, caplog):
    from posresample import lm

    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=5), progress=False)
    with db.read(engine) as conn:
        assert conn.execute(select(scans.c.dtype, scans.c.attn)).one() == ("float32", "eager")
    monkeypatch.setattr(lm, "default_dtype", lambda device: torch.bfloat16)  # as a GPU would load it
    with pytest.raises(ConfigError, match="dtype: 'float32' -> 'bfloat16'"):
        run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu), progress=False)
    assert "probe was fit on float32 activations" in caplog.text  # the sidecar's dtype, warned about
    assert (
        run_scan(
            engine, scan_options(tiny_dir, tiny_probe, sample_conllu, name="bf16", max_prefixes=3), progress=False
        ).candidates
        == 3
    )


def test_a_scan_another_process_is_running_is_refused(engine, tiny_dir, tiny_probe, sample_conllu):
    first = run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=4), progress=False)
    with db.write(engine) as conn:  # another process holds the lease, renewed moments ago
        conn.execute(scans.update().values(lease_owner="otherhost:1:abc", lease_expires_at=db.db_now() + 60))
    with pytest.raises(ConfigError, match="is being run by otherhost:1:abc"):
        run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=8), progress=False)
    assert scan_store.count_candidates(engine, first.scan["id"]) == 4
    with db.write(engine) as conn:  # its lease expired: it died; the scan may be taken over
        conn.execute(scans.update().values(lease_expires_at=db.db_now() - 1))
    assert (
        run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=8), progress=False).candidates
        == 8
    )
    with db.read(engine) as conn:
        assert conn.execute(select(scans.c.lease_owner)).scalar() is None  # released at the end


def test_noise_keys_differ_between_splits_and_reproduce_from_content():
    from posresample.queue import ClaimedJob
    from posresample.worker import noise_key

    def job(split, text="I like it", idx=3, pos=2):
        return ClaimedJob(
            id=1,
            attempt=1,
            dataset_idx=idx,
            target_position=pos,
            prefix_token_ids=[2, 5, 6],
            split=split,
            sentence_text=text,
            params={},
        )

    assert noise_key(job("validation")) == noise_key(job("validation"))  # any database, any host
    assert (
        len(
            {
                noise_key(job("validation")),
                noise_key(job("test")),
                noise_key(job("validation", "Other text")),
                noise_key(job("validation", pos=3)),
            }
        )
        == 4
    )
    assert 0 <= noise_key(job("test")) < 2**63


def test_worker_dtype_bfloat16_samples_in_bfloat16_and_says_so(sqlite_url, tiny_dir):
    """worker --dtype bfloat16 on a CPU: the model runs in bfloat16, every job is sampled, and the
    worker's sampler record (export's samplers) says bfloat16 where the default run says float32."""
    from tests.helpers import invoke, seed_jobs

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    seed_jobs(engine, 3, num_samples=4, max_new_tokens=3, model=tiny_dir)
    result = invoke("worker", "--db", sqlite_url, "--device", "cpu", "--dtype", "bfloat16", "--no-progress")
    assert result.exit_code == 0, result.output
    with db.read(engine) as conn:
        assert conn.execute(select(func.count()).select_from(completions)).scalar_one() == 3 * 4
        described = conn.execute(select(workers.c.sampler)).scalars().all()
    assert [d[tiny_dir]["dtype"] for d in described] == ["bfloat16"]
    engine.dispose()


def test_sampling_dtype_defaults_to_the_devices_own():
    from posresample.lm import sampling_dtype

    assert sampling_dtype("auto", torch.device("cpu")) == torch.float32
    assert sampling_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert sampling_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert sampling_dtype("float32", torch.device("cuda")) == torch.float32
