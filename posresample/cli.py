"""The `posresample` command line (also `python cli.py`)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys

import click

from . import __version__
from .config import (
    DB_ENV_VAR,
    DEFAULT_DB_RETRY_SECONDS,
    DEFAULT_DB_URL,
    DEFAULT_EXCLUDE,
    DEFAULT_LABEL_BATCH_JOBS,
    DEFAULT_LABEL_LEASE_SECONDS,
    DEFAULT_LAYER,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MIN_LABELLED,
    DEFAULT_MODEL,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_ORDER_SEED,
    DEFAULT_REFITS,
    DEFAULT_SCAN_NAME,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    DEFAULT_STOP_GRACE,
    DEFAULT_TAGGER_MAX_EPOCHS,
    DEFAULT_TAGGER_MAX_STEPS,
    DEFAULT_TEMPERATURE,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_P,
    INT32_MAX,
    MAX_NEW_TOKENS,
    MAX_NUM_SAMPLES,
    SAMPLING_DTYPES,
    SEED_MAX,
    GenerationParams,
)
from .errors import PosresampleError

log = logging.getLogger("posresample")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns library errors into one line `Error: ...` (exit 1); -v shows the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PosresampleError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if not isinstance(exc, SQLAlchemyError) or (ctx.obj and ctx.obj.get("verbose")):
                raise
            orig = getattr(exc, "orig", None) or exc
            click.echo(f"Error: database: {str(orig).strip().splitlines()[0]}", err=True)
            ctx.exit(1)


class FiniteFloat(click.ParamType):
    """A float that is finite (no nan, no inf) and within [min, max]; `min_open` excludes min itself."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False):
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_ok = self.min is None or (number > self.min if self.min_open else number >= self.min)
        if not low_ok or (self.max is not None and number > self.max):
            low = "-inf" if self.min is None else f"{self.min:g}"
            high = "inf" if self.max is None else f"{self.max:g}"
            self.fail(f"{number:g} is not in {'(' if self.min_open else '['}{low}, {high}]", param, ctx)
        return number


COUNT = click.IntRange(1, INT32_MAX)  # a positive count that fits the 32-bit integer columns


MODEL_HELP = "HF model id, local folder, or a .gguf file (converted once to a cached folder)."

# options several commands share: one definition each
PARAMS_OPTION = click.option(
    "--params",
    "params_id",
    default=None,
    type=COUNT,
    help="Generation params id (when a scan was sampled with several).",
)
DEVICE_OPTION = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
ATTN_OPTION = click.option(
    "--attn", default="auto", show_default=True, help="Attention implementation (auto: eager for Gemma 2)."
)
MIN_LABELLED_OPTION = click.option(
    "--min-labelled",
    default=DEFAULT_MIN_LABELLED,
    show_default=True,
    type=COUNT,
    help="Leave out candidates with fewer labelled completions.",
)


def db_option(func):
    return click.option(
        "--db",
        "db_url",
        envvar=DB_ENV_VAR,
        default=DEFAULT_DB_URL,
        show_default=True,
        help=f"Database URL (sqlite:///FILE or postgresql+psycopg://...); env {DB_ENV_VAR}.",
    )(func)


def open_database(db_url: str, create: bool = False, retry_seconds: float = 0.0):
    from . import db

    return db.open_database(db_url, create=create, retry_seconds=retry_seconds)


def db_retry_option(func):
    return click.option(
        "--db-retry-seconds",
        default=DEFAULT_DB_RETRY_SECONDS,
        show_default=True,
        type=FiniteFloat(0),
        help="Ride out a database outage (restart, held lock) this long, retrying with back-off.",
    )(func)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "httpx", "urllib3", "filelock", "spacy", "matplotlib", "PIL", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.pass_context
def cli(ctx, verbose):
    """Resample continuations where a POS probe on Gemma 2 is unsure.

    \b
    The pipeline:
      scan      dataset + model + probe   ->  candidates and queued jobs
      worker    claims jobs, samples      ->  completions  (one per GPU, any host)
      label     completions + tagger      ->  the target word's UPOS in each completion
      analyze   labels + tagger confusion ->  per candidate and for the study: genuinely ambiguous?
      export    candidates + completions  ->  JSONL
    \b
    Around it:
      train-probe, train-tagger   make the probe and the tagger
      evaluate-tagger             measures a tagger's confusion on a treebank (analyze corrects with it)
      annotate                    people label completions by hand in a local page
      distill                     a probe trained on the words' distributions
      status, requeue, db upgrade look after the queue and the schema
      demo                        scan -> worker -> export -> label -> analyze offline
    """
    ctx.ensure_object(dict)["verbose"] = verbose
    setup_logging(verbose)


def generation_options(func):
    options = [
        click.option(
            "--num-samples",
            default=DEFAULT_NUM_SAMPLES,
            show_default=True,
            type=click.IntRange(1, MAX_NUM_SAMPLES),
            help="Continuations per prefix.",
        ),
        click.option(
            "--max-new-tokens",
            default=DEFAULT_MAX_NEW_TOKENS,
            show_default=True,
            type=click.IntRange(1, MAX_NEW_TOKENS),
            help="Tokens per continuation.",
        ),
        click.option(
            "--temperature",
            default=DEFAULT_TEMPERATURE,
            show_default=True,
            type=FiniteFloat(0, min_open=True),
            help="Sampling temperature.",
        ),
        click.option(
            "--top-p",
            default=DEFAULT_TOP_P,
            show_default=True,
            type=FiniteFloat(0, 1, min_open=True),
            help="Nucleus mass kept (1.0: no top-p step).",
        ),
        click.option("--top-k", default=None, type=COUNT, help="Top-k before top-p (off unless given)."),
        click.option(
            "--seed", default=DEFAULT_SEED, show_default=True, type=click.IntRange(0, SEED_MAX), help="Sampling seed."
        ),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


def silence_library_progress() -> None:
    from .lm import silence_library_progress as silence

    silence()


SCAN_NAME_MAX = 200  # the scans.name column


def check_scan_name(name: str) -> str:
    if not name or len(name) > SCAN_NAME_MAX or not name.isprintable() or name != name.strip():
        raise click.BadParameter(
            f"a scan name is 1-{SCAN_NAME_MAX} printable characters without spaces at its ends", param_hint="--name"
        )
    return name


def parse_exclude(spec: str) -> tuple[int, ...]:
    from .data import parse_label_list

    return parse_label_list(spec)


@cli.command(context_settings=CONTEXT)
@click.option("--probe", required=True, type=click.Path(dir_okay=False), help="The probe (.joblib, scikit-learn).")
@click.option(
    "--dataset",
    required=True,
    help="A .conllu file, a UD directory, a parquet dir or universal-dependencies/universal_dependencies:en_ewt.",
)
@click.option("--split", default=DEFAULT_SPLIT, show_default=True, help="train, validation or test.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)
@click.option(
    "--layer",
    default=DEFAULT_LAYER,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="hidden_states index the probe reads.",
)
@click.option(
    "--threshold",
    default=DEFAULT_THRESHOLD,
    show_default=True,
    type=FiniteFloat(0, 1),
    help="Keep tokens whose max probe probability is below this.",
)
@click.option(
    "--exclude", default=",".join(DEFAULT_EXCLUDE), show_default=True, help="True labels to skip (names or ids)."
)
@click.option("--max-prefixes", default=None, type=COUNT, help="Stop after this many candidates.")
@click.option(
    "--name",
    default=DEFAULT_SCAN_NAME,
    show_default=True,
    callback=lambda _c, _p, v: check_scan_name(v),
    help="Scan name; re-running it resumes.",
)
@click.option(
    "--order",
    type=click.Choice(["random", "dataset"]),
    default=None,
    help="Order the jobs drain in: random (a seeded permutation, so the jobs done at any moment are a "
    "random sample of the candidates) or dataset [default: random for a new scan, as stored when resuming].",
)
@click.option(
    "--order-seed",
    default=DEFAULT_ORDER_SEED,
    show_default=True,
    type=click.IntRange(0, SEED_MAX),
    help="Seed of the random order.",
)
@DEVICE_OPTION
@ATTN_OPTION
@click.option("--batch-size", default=32, show_default=True, type=COUNT, help="Sentences per forward pass.")
@click.option("--no-progress", is_flag=True, help="No progress bars (the model loader's neither).")
@click.option(
    "--trust-probe",
    is_flag=True,
    help="Unpickle the probe as it is, running any code it names (default: linear classifiers only).",
)
@generation_options
@db_option
@click.pass_context
def scan(
    ctx,
    probe,
    dataset,
    split,
    model,
    layer,
    threshold,
    exclude,
    max_prefixes,
    name,
    order,
    order_seed,
    device,
    attn,
    batch_size,
    no_progress,
    trust_probe,
    num_samples,
    max_new_tokens,
    temperature,
    top_p,
    top_k,
    seed,
    db_url,
):
    """Find the tokens where the probe is unsure and queue them for sampling.

    \b
    Jobs drain in a random order seeded by --order-seed, so a study stopped part-way holds a
    random sample of the candidates.

    \b
    Examples:
        python cli.py scan --probe probe.joblib \\
            --dataset ../shared/data/ud_english_ewt --split validation
        python cli.py scan --probe probe.joblib --model gemma-3-270m-q4_k_m.gguf \\
            --dataset ../shared/data/ud_english_ewt --split validation
    """
    from .scan import ScanOptions, run_scan

    params = GenerationParams(model, temperature, top_p, top_k, max_new_tokens, num_samples, seed).validate()
    opts = ScanOptions(
        probe=probe,
        dataset=dataset,
        split=split,
        model=model,
        layer=layer,
        threshold=threshold,
        exclude=parse_exclude(exclude),
        params=params,
        name=name,
        max_prefixes=max_prefixes,
        device=device,
        attn=attn,
        batch_size=batch_size,
        trust_probe=trust_probe,
        order=order,
        order_seed=order_seed,
    )
    if no_progress:
        silence_library_progress()
    engine = open_database(db_url, create=True)  # another app's or a newer schema is refused before the model loads
    result = run_scan(engine, opts, progress=not no_progress)
    click.echo(
        f"scan {name!r}: {result.candidates} candidates ({result.added} new), "
        f"{result.scan['sentences_done']}/{result.scan['sentences_total']} sentences; "
        f"jobs queued with generation params {result.params_id}"
    )


@cli.command(context_settings=CONTEXT)
@DEVICE_OPTION
@click.option("--devices", default=None, help="Start one worker per device and supervise them: 0,1,2,3 or all.")
@click.option(
    "--batch-jobs", default=None, type=COUNT, help="Jobs claimed and sampled together [default: 32 on GPU, 4 on CPU]."
)
@click.option("--max-rows", default=None, type=COUNT, help="Rows per decode batch [default: from free GPU memory].")
@click.option(
    "--lease-seconds",
    default=DEFAULT_LEASE_SECONDS,
    show_default=True,
    type=FiniteFloat(0.5),
    help="Lease per claimed job, renewed by heartbeats.",
)
@click.option(
    "--max-attempts",
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    type=COUNT,
    help="Claims before a job ends failed.",
)
@click.option(
    "--stop-grace",
    default=DEFAULT_STOP_GRACE,
    show_default=True,
    type=FiniteFloat(0),
    help="Seconds to finish the batch after SIGINT/SIGTERM.",
)
@db_retry_option
@click.option("--no-wait", is_flag=True, help="Exit when nothing is claimable, even if other workers hold leases.")
@click.option(
    "--max-restarts",
    default=3,
    show_default=True,
    type=click.IntRange(0, INT32_MAX),
    help="With --devices: restarts per device (after a back-off of 1, 2, 4 ... 60 s).",
)
@ATTN_OPTION
@click.option(
    "--decode",
    type=click.Choice(["hf", "fast"]),
    default="hf",
    show_default=True,
    help="Decode path: the model's forward on copied KV (hf) or the shared-prefix Gemma 2 step (fast).",
)
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(["off", "inductor", "cuda-graph"]),
    default="off",
    show_default=True,
    help="With --decode fast: run its step through torch.compile (inductor) or "
    "capture it once per batch as a CUDA graph and replay it (cuda-graph, CUDA only).",
)
@click.option(
    "--dtype",
    type=click.Choice(SAMPLING_DTYPES),
    default="auto",
    show_default=True,
    help="The model's weights and activations while sampling: auto is bfloat16 on a GPU, float32 on a CPU. "
    "bfloat16 on a CPU with AVX512-BF16 samples about 2x faster but not the float32 model's samples "
    "(docs/benchmarks.md); each worker's dtype is recorded with its samples (export's samplers).",
)
@click.option("--max-jobs", default=None, type=COUNT, help="Stop after this many jobs (with --devices: in all).")
@click.option(
    "--model",
    "gguf_models",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A .gguf file behind the queued jobs' model (gguf:sha256:...), converted here once; repeatable.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--jobs-budget", default=None, hidden=True, help="The --max-jobs budget file shared by a supervisor's workers."
)
@click.option("--fake-sampler", is_flag=True, hidden=True, help="Model-free sampler for queue tests and benchmarks.")
@click.option("--fake-delay", default=0.0, type=float, hidden=True)
@click.option("--fake-poison-token", default=None, type=int, hidden=True)
@db_option
@click.pass_context
def worker(
    ctx,
    device,
    devices,
    batch_jobs,
    max_rows,
    lease_seconds,
    max_attempts,
    stop_grace,
    db_retry_seconds,
    no_wait,
    max_restarts,
    attn,
    decode,
    compile_mode,
    dtype,
    max_jobs,
    gguf_models,
    no_progress,
    jobs_budget,
    fake_sampler,
    fake_delay,
    fake_poison_token,
    db_url,
):
    """Claim queued prefixes, sample continuations, write them back.

    Exits when no job is left; waits while another worker's lease is pending. Loads the model of
    the queued jobs before claiming any: a model that will not load stops the worker (exit 1) and
    leaves every job untouched. A database outage is ridden out for --db-retry-seconds.
    SIGINT/SIGTERM: finish or release the current batch, then stop; a second signal quits at once.

    \b
    Examples:
        python cli.py worker --device cuda:0
        python cli.py worker --devices all --db postgresql+psycopg://user@host/posresample
        python cli.py worker --device cuda:0 --decode fast --compile cuda-graph
        python cli.py worker --device cpu --model gemma-3-270m-q4_k_m.gguf --max-jobs 300
        python cli.py worker --device cpu --dtype bfloat16 --model gemma-3-270m-q4_k_m.gguf
    """
    from .worker import SamplerChoice, WorkerOptions, run_worker, worker_device

    if compile_mode != "off" and decode != "fast":
        raise click.UsageError(f"--compile {compile_mode} needs --decode fast")
    register_gguf_models(gguf_models)  # before any process starts: a bad file is one line, converted once
    if devices:
        from .supervise import supervise_workers

        argv = sys.argv[sys.argv.index("worker") :]
        raise SystemExit(supervise_workers(argv, devices, max_restarts, max_jobs, ctx.obj.get("verbose", False)))
    dev = worker_device(device, fake_sampler)
    if compile_mode == "cuda-graph" and not dev.startswith("cuda"):
        raise click.UsageError(f"--compile cuda-graph needs a CUDA device, not {dev}")
    engine = open_database(db_url, retry_seconds=db_retry_seconds)
    if no_progress:
        silence_library_progress()
    opts = WorkerOptions(
        device=dev,
        batch_jobs=batch_jobs,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        stop_grace=stop_grace,
        wait=not no_wait,
        progress=not no_progress,
        db_retry_seconds=db_retry_seconds,
        max_jobs=max_jobs,
        budget_file=jobs_budget,
    )
    sampler = SamplerChoice(
        device=dev,
        max_rows=max_rows,
        attn=attn,
        decode=decode,
        compile=compile_mode,
        dtype=dtype,
        fake=fake_sampler,
        fake_delay=fake_delay,
        fake_poison_token=fake_poison_token,
    )
    raise SystemExit(run_worker(engine, opts, sampler))


def register_gguf_models(paths) -> None:
    from .gguf_cache import register

    for path in paths:
        register(path)


@cli.command(context_settings=CONTEXT)
@click.option("-o", "--output", required=True, help="Output path: .jsonl, .jsonl.zst, or - for stdout.")
@click.option("--scan", "scan_name", default=None, help="Scan to export (needed when the database holds several).")
@PARAMS_OPTION
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@db_option
def export(output, scan_name, params_id, no_progress, db_url):
    """Write done candidates and their completions as JSONL, a header record first.

    \b
    Example:
        python cli.py export -o uncertain_resamples.jsonl.zst
    """
    from .export import run_export

    meta = run_export(open_database(db_url), output, scan_name, params_id, progress=not no_progress and output != "-")
    if output != "-":
        click.echo(f"wrote {meta['counts']['records']} records to {output}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
def status(as_json, db_url):
    """Show candidates, jobs by state, workers, throughput and ETA.

    \b
    Example:
        python cli.py status --json
    """
    from .queue import status_report

    report = status_report(open_database(db_url))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_status(report))


def format_status(r: dict) -> str:
    jobs = r["jobs"]
    lines = [f"scan         {_scan_line(scan)}" for scan in r["scans"]] or ["scan         (none)"]
    totals = r["workers_total"]
    lines += [
        f"candidates   {r['candidates']}",
        "jobs         " + "  ".join(f"{k} {v}" for k, v in jobs.items()),
        f"completions  {r['completions']}",
        f"stale leases {r['stale_leases']}",
        f"oldest todo  {_age(r['oldest_pending_seconds'])}",
        f"throughput   {r['throughput_jobs_per_minute']} jobs/min (last 10 min)",
        f"eta          {_age(r['eta_seconds'])}"
        + ("" if r["workers"] or not (jobs["todo"] or jobs["running"]) else "  (no live worker)"),
        f"workers      {totals['live']} live, {totals['lost']} lost (no heartbeat), {totals['stopped']} stopped",
    ]
    for w in r["workers"]:
        lines.append(
            f"  {w['id']}  {w['device']}  jobs {w['jobs_done']}  heartbeat {w['last_heartbeat_seconds_ago']}s ago"
        )
    return "\n".join(lines)


def _scan_line(scan: dict) -> str:
    sampled = f"{scan['sampled']}/{scan['candidates']} candidates sampled"
    if 0 < scan["sampled"] < scan["candidates"]:
        sampled += (
            ", a random sample (random order, seed {})".format(scan["order_seed"])
            if scan["order"] == "random"
            else ", the first in dataset order (not a random sample)"
        )
    return (
        f"{scan['name']}  {scan['split']}  {scan['sentences_done']}/{scan['sentences_total']} sentences, "
        f"{scan['state']}  ({scan['candidates']} candidates; {sampled})"
    )


def _age(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


@cli.command(context_settings=CONTEXT)
@click.option("--failed", is_flag=True, help="Requeue failed jobs.")
@click.option("--stale", is_flag=True, help="Requeue running jobs whose lease expired.")
@click.option("--job", "job_id", type=COUNT, default=None, help="Requeue one job by id.")
@click.option(
    "--force", is_flag=True, help="With --job: even when a live worker holds it (its work is then discarded)."
)
@db_option
def requeue(failed, stale, job_id, force, db_url):
    """Put failed or stale jobs back in the queue, attempts reset.

    \b
    Example:
        python cli.py requeue --failed
    """
    from .queue import requeue as run_requeue

    if force and job_id is None:
        raise click.UsageError(
            "--force applies to --job ID only (a live worker's job); --failed and --stale never touch live leases"
        )
    click.echo(f"requeued {run_requeue(open_database(db_url), failed, stale, job_id, force)} job(s)")


@cli.group("db", cls=Group, context_settings=CONTEXT)
def db_group():
    """Manage the database schema (Alembic)."""


@db_group.command(context_settings=CONTEXT)
@db_option
def upgrade(db_url):
    """Create or upgrade the schema to the newest revision.

    \b
    Example:
        python cli.py db upgrade --db postgresql+psycopg://user@host/posresample
    """
    from . import db

    before, after = db.upgrade(db.make_engine(db_url))
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@cli.command("train-probe", context_settings=CONTEXT)
@click.option(
    "--dataset",
    required=True,
    help="A .conllu file, a UD directory, a parquet dir or universal-dependencies/universal_dependencies:en_ewt.",
)
@click.option("--split", default="train", show_default=True, help="Split to fit on.")
@click.option(
    "--eval-split",
    default=None,
    help="Split to report accuracy on ('' for none) [default: validation; given one .conllu file, the "
    "dev file beside it in the UD layout, else none].",
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)
@click.option(
    "--layer",
    default=DEFAULT_LAYER,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="hidden_states index to read.",
)
@click.option(
    "--exclude", default=",".join(DEFAULT_EXCLUDE), show_default=True, help="Labels left out of the fit (names or ids)."
)
@click.option("--max-sentences", default=None, type=COUNT, help="Fit on the first N sentences only.")
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Keep activations as .npz here; a second fit skips the model.",
)
@DEVICE_OPTION
@ATTN_OPTION
@click.option(
    "--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Sentences per forward pass."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to save the probe (.joblib); a .json sidecar goes beside it.",
)
def train_probe(
    dataset, split, eval_split, model, layer, exclude, max_sentences, cache_dir, device, attn, batch_size, output
):
    """Fit the research probe: LogisticRegression on one layer's activations.

    The recipe: C=1.0, max_iter=500, class_weight=balanced, lbfgs, multinomial; integer classes in
    the Hugging Face UPOS id order, the excluded labels left out.

    \b
    Example:
        python cli.py train-probe --dataset ../shared/data/ud_english_ewt \\
            --split train --layer 12 -o probe.joblib
    """
    from .train_probe import TrainOptions, run_train_probe

    opts = TrainOptions(
        dataset=dataset,
        split=split,
        eval_split=eval_split,
        model=model,
        layer=layer,
        exclude=parse_exclude(exclude),
        output=output,
        max_sentences=max_sentences,
        cache_dir=cache_dir,
        device=device,
        attn=attn,
        batch_size=batch_size,
    )
    result = run_train_probe(opts)
    if result.accuracy is not None:
        click.echo(result.report)
        click.echo(f"{result.eval_split} accuracy: {result.accuracy:.4f}")
    click.echo(
        f"wrote {result.probe_path} ({len(result.classes)} classes, {result.n_train} training tokens) and "
        f"{result.sidecar_path}"
    )


@cli.command(context_settings=CONTEXT)
@click.option(
    "--tagger",
    "tagger_spec",
    required=True,
    help="spacy:PATH (a train-tagger folder) or spacy:PACKAGE (an installed pipeline).",
)
@click.option("--tagger-name", default=None, help="Name for the tagger's labels [default: the folder or package name].")
@click.option("--scan", "scan_name", default=None, help="Label this scan's completions only [default: every scan].")
@click.option(
    "--batch",
    "batch_jobs",
    default=DEFAULT_LABEL_BATCH_JOBS,
    show_default=True,
    type=COUNT,
    help="Done jobs claimed and tagged together.",
)
@click.option(
    "--processes", default=1, show_default=True, type=click.IntRange(1, 256), help="Label processes on this host."
)
@click.option(
    "--lease-seconds",
    default=DEFAULT_LABEL_LEASE_SECONDS,
    show_default=True,
    type=FiniteFloat(0.5),
    help="A killed process's jobs are taken over after this.",
)
@click.option(
    "--model",
    "gguf_models",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A .gguf file behind the scan's model (gguf:sha256:...) where this host has not converted it; repeatable.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@db_retry_option
@db_option
@click.pass_context
def label(
    ctx,
    tagger_spec,
    tagger_name,
    scan_name,
    batch_jobs,
    processes,
    lease_seconds,
    gguf_models,
    no_progress,
    db_retry_seconds,
    db_url,
):
    """Tag the target word of every sampled completion with a POS tagger.

    Resumable (a re-run labels only what is missing) and parallel (several processes or hosts split
    the done jobs through leases); it can run while workers still sample. The original sentence of
    each candidate is tagged too, to show how far to trust the tagger on these tokens.

    \b
    Example:
        python cli.py label --tagger spacy:taggers/ewt --processes 2
    """
    from .label import LabelOptions, run_label

    register_gguf_models(gguf_models)
    opts = LabelOptions(
        tagger=tagger_spec,
        tagger_name=tagger_name,
        scan=scan_name,
        batch_jobs=batch_jobs,
        processes=processes,
        lease_seconds=lease_seconds,
        progress=not no_progress,
        db_retry_seconds=db_retry_seconds,
    )
    result = run_label(
        open_database(db_url, retry_seconds=db_retry_seconds), db_url, opts, verbose=ctx.obj.get("verbose", False)
    )
    summary = result.summary
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items()))
    upos = " ".join(f"{k} {v}" for k, v in summary["upos"].items())
    rate = result.added / result.seconds if result.seconds > 0 else 0.0
    click.echo(
        f"tagger {result.tagger!r}: {result.added} completions labelled now ({rate:.0f}/s), "
        f"{summary['labels']} in all ({statuses}); {result.candidates_added} original sentences tagged"
    )
    click.echo(f"upos: {upos}")


@cli.command(context_settings=CONTEXT)
@click.option(
    "-o",
    "--output",
    default="report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the report.",
)
@click.option(
    "--tagger", "tagger_name", default=None, help="Tagger name (needed when several labelled the completions)."
)
@click.option("--scan", "scan_name", default=None, help="Scan to analyze (needed when the database holds several).")
@PARAMS_OPTION
@MIN_LABELLED_OPTION
@click.option(
    "--tagger-confusion",
    "confusion_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The tagger's confusion as JSON counts, true UPOS -> tagger's UPOS [default: the one stored with the tagger].",
)
@click.option(
    "--confusion-from",
    "confusion_from",
    default=None,
    help="Correct with the tagger's confusion against an annotator's labels on these completions (human:NAME).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, INT32_MAX),
    help="Seed of the bootstraps, tests and draws.",
)
@click.option(
    "--refits",
    default=DEFAULT_REFITS,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Replicate studies of the parametric bootstrap, each a whole deconvolution on a thread "
    "(0: the two-stage bootstrap alone, faster, but its intervals miss the truth more "
    "often than 5% at thousands of candidates: docs/benchmarks.md).",
)
@click.option(
    "--distill",
    "distill_sidecar",
    default=None,
    type=click.Path(dir_okay=False),
    help="A distilled probe's sidecar JSON: its cross-validation joins the report.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@db_option
def analyze(
    output,
    tagger_name,
    scan_name,
    params_id,
    min_labelled,
    confusion_file,
    confusion_from,
    seed,
    refits,
    distill_sidecar,
    no_progress,
    db_url,
):
    """Say, per uncertain token and for the study, whether the word is genuinely ambiguous.

    Corrects the labels for the tagger's confusion and the sampling noise: per candidate a
    corrected UPOS distribution with 95% intervals, a p-value for the probe (Benjamini-Hochberg
    across candidates) and a verdict; for the study, population shares of the verdicts and
    bias-corrected divergences with intervals aimed at the truth (their measured coverage is in
    docs/benchmarks.md), the share of genuinely ambiguous tokens by the probe's certainty, and the
    raw (uncorrected) view beside them. Where the tagger's stored confusion has counts per word
    type (train-tagger, evaluate-tagger), each candidate is corrected with its own word's
    confusion; a sensitivity table recomputes the shares under the all-words confusion, its errors
    x1.5 and x2, the candidates' own sentences and other taggers, and the candidates sampled again
    under other generation params (--temperature 1.0 --top-p 1.0, say) are compared on themselves.
    Writes candidates.csv, summary.json, six PNG plots and index.html (one self-contained page).

    \b
    Examples:
        python cli.py analyze --tagger ewt -o report/
        python cli.py analyze --tagger ewt --tagger-confusion confusion.json -o report/
        python cli.py analyze --tagger ewt --confusion-from human:ana -o report/
    """
    from .analyze import flow_line, params_lines
    from .report import run_report

    result, paths = run_report(
        open_database(db_url),
        output,
        distill_sidecar=distill_sidecar,
        confusion_file=confusion_file,
        scan_name=scan_name,
        tagger_name=tagger_name,
        params_id=params_id,
        min_labelled=min_labelled,
        seed=seed,
        confusion_from=confusion_from,
        refits=refits,
        progress=not no_progress,
    )
    click.echo(result.summary["headline"])
    counts = result.summary["verdict_counts"]
    click.echo(
        f"per candidate (each on its own {result.summary['labels_analysed'] // max(len(result.rows), 1)} or so "
        "labels): "
        + ", ".join(f"{n} {v.replace('_', ' ')}" for v, n in counts.items())
        + "; the shares above are the population's, estimated with the noise removed"
    )
    click.echo(result.summary["sensitivity_line"])
    for line in params_lines(result.summary):
        click.echo(line)
    click.echo(flow_line(result.summary))
    raw, fixed = result.summary["raw"]["probe_vs_empirical"]["tv"], result.summary["corrected"]["divergences"]["tv"]
    click.echo(
        f"mean TV(probe, words) {fixed['estimate']:.3f} [{fixed['ci95'][0]:.3f}, {fixed['ci95'][1]:.3f}] corrected, "
        f"{raw['mean']:.3f} raw; fitted temperature {result.summary['fitted_temperature']['corrected']:.3g} corrected, "
        f"{result.summary['fitted_temperature']['raw']:.3g} raw"
    )
    click.echo(
        f"wrote {paths['html']} ({paths['html_bytes'] / 1e6:.1f} MB; and candidates.csv, summary.json, "
        f"{len(paths) - 4} plots)"
    )


@cli.command(context_settings=CONTEXT)
@click.option(
    "-o",
    "--output",
    default="distilled.joblib",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to save the distilled probe (.joblib); a .json sidecar goes beside it.",
)
@click.option(
    "--tagger", "tagger_name", default=None, help="Tagger whose labels make the targets (needed when several)."
)
@click.option("--scan", "scan_name", default=None, help="Scan to distil from (needed when the database holds several).")
@PARAMS_OPTION
@click.option(
    "--layers",
    default=None,
    help="hidden_states indexes, comma-separated; the first is saved [default: the scan's layer].",
)
@MIN_LABELLED_OPTION
@click.option(
    "--folds",
    default=5,
    show_default=True,
    type=click.IntRange(2, 100),
    help="Cross-validation folds (split by sentence).",
)
@click.option(
    "--cache-dir", default=None, type=click.Path(file_okay=False), help="Keep the prefix activations as .npz here."
)
@DEVICE_OPTION
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, INT32_MAX),
    help="Seed of the folds and the bootstrap.",
)
@click.option(
    "--model",
    "gguf_models",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A .gguf file behind the scan's model (gguf:sha256:...) where this host has not converted it; repeatable.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@db_option
def distill(
    output,
    tagger_name,
    scan_name,
    params_id,
    layers,
    min_labelled,
    folds,
    cache_dir,
    device,
    seed,
    gguf_models,
    no_progress,
    db_url,
):
    """Train a probe on the empirical UPOS distributions and score it against the original.

    Soft-label multinomial logistic regression (torch L-BFGS, L2 by cross-validation) on each
    labelled candidate's activations at the target; sentence-level K-fold cross-validation gives
    held-out KL, TV, Brier and accuracy for it, the original probe, and the original with a fitted
    temperature. Several --layers give a layer curve (a PNG beside the output). The saved probe is
    one the scan accepts; `analyze --distill OUTPUT.json` adds a section to the report.

    \b
    Example:
        python cli.py distill --tagger ewt --layers 12,4,8,16 --cache-dir activations -o distilled.joblib
    """
    from .distill import run_distill

    try:
        layer_list = [int(x) for x in layers.split(",")] if layers else None
    except ValueError:
        raise click.BadParameter(
            f"{layers!r} is not a comma-separated list of integers", param_hint="--layers"
        ) from None
    engine = open_database(db_url)
    register_gguf_models(gguf_models)
    if no_progress:
        silence_library_progress()
    result = run_distill(
        engine,
        output,
        tagger_name,
        scan_name,
        params_id,
        layer_list,
        min_labelled,
        folds,
        cache_dir,
        device,
        seed,
        progress=not no_progress,
    )
    click.echo(
        f"{result.n_candidates} candidates, {len(result.layer_results)} layer(s), held-out mean KL(empirical || .):"
    )
    for r in result.layer_results:
        parts = [
            f"{name} {sc['kl']['mean']:.3f} [{sc['kl']['ci95'][0]:.3f}, {sc['kl']['ci95'][1]:.3f}]"
            for name, sc in r["scores"].items()
        ]
        click.echo(f"  layer {r['layer']}: " + "; ".join(parts))
    click.echo(
        f"wrote {result.probe_path} and {result.sidecar_path}"
        + (f" and {result.plot_path}" if result.plot_path else "")
    )


@cli.command("train-tagger", context_settings=CONTEXT)
@click.option(
    "--dataset", required=True, help="A UD directory (train, dev, test), a .conllu file (a tenth held out) or a HF id."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="New folder for the spaCy pipeline; OUTPUT.json is its sidecar.",
)
@click.option(
    "--max-steps",
    default=DEFAULT_TAGGER_MAX_STEPS,
    show_default=True,
    type=COUNT,
    help="Training steps at most (spaCy keeps the best on dev).",
)
@click.option(
    "--max-epochs",
    default=DEFAULT_TAGGER_MAX_EPOCHS,
    show_default=True,
    type=COUNT,
    help="Passes over the training data at most.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, INT32_MAX), help="Training seed.")
@click.option("--no-progress", is_flag=True, help="No training log.")
def train_tagger(dataset, output, max_steps, max_epochs, seed, no_progress):
    """Train a UPOS tagger (spaCy tok2vec + morphologizer) on a treebank, offline.

    Writes the pipeline folder and a sidecar JSON with dev and test UPOS accuracy, on gold tokens
    and on raw text through the span lookup `label` uses. About 25 minutes on 2 CPU cores for
    UD English-EWT at the default --max-steps.

    \b
    Example:
        python cli.py train-tagger --dataset ../shared/data/ud_english_ewt -o taggers/ewt
    """
    from .train_tagger import run_train_tagger

    result = run_train_tagger(
        dataset, output, max_steps=max_steps, max_epochs=max_epochs, seed=seed, progress=not no_progress
    )
    for name, acc in result.accuracy.items():
        click.echo(
            f"{name} ({result.sources[name]}): UPOS accuracy {acc['gold_tokens']:.4f} on gold tokens, "
            f"{acc['raw_text']:.4f} on raw text ({acc['words']} words)"
        )
    click.echo(f"wrote {result.model_dir} and {result.sidecar}; use it as --tagger spacy:{result.model_dir}")


@cli.command(context_settings=CONTEXT)
@click.option("--annotator", required=True, help="Your name: the answers are labels of the tagger human:NAME.")
@click.option(
    "--scan", "scan_name", default=None, help="Scan whose completions to label (needed when there are several)."
)
@PARAMS_OPTION
@click.option(
    "--sample", default=300, show_default=True, type=COUNT, help="Completions in the queue (a later run can grow it)."
)
@click.option(
    "--overlap",
    default=0.0,
    show_default=True,
    type=FiniteFloat(0, 100),
    help="Percent of the queue's items that go to a second annotator too (for agreement).",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (beyond localhost needs --token)."
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option(
    "--token", default=None, help="A secret the page must be opened with (?token=...); required beyond localhost."
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, INT32_MAX), help="Seed of the sample.")
@click.option(
    "--random",
    "at_random",
    is_flag=True,
    help="Add the new items as a simple random sample of the completions, not disagreements first: "
    "what measures the tagger's confusion without bias (analyze --confusion-from uses them alone).",
)
@db_option
def annotate(annotator, scan_name, params_id, sample, overlap, host, port, token, seed, at_random, db_url):
    """Label the target word of sampled completions by hand, in a local web page.

    Serves a page that shows one completion at a time (the prefix, the model's continuation, the
    target highlighted) with a button and a key per UPOS tag, "can't tell" and "not a word here",
    and undo. Each answer is stored at once as a label of the tagger human:NAME; a restart resumes;
    several annotators at once never get the same item (unless --overlap asks for it). The queue
    puts first the completions whose machine label differs from the probe's argmax or whose span
    was odd; --random adds a simple random sample instead. `analyze` then measures the tagger
    against the human labels: on the random items alone where there are any, else on all, each
    weighted by how its stratum (agrees, disagrees, odd span) stands in the study.

    \b
    Examples:
        python cli.py annotate --annotator ana --sample 300 --overlap 10
        python cli.py annotate --annotator ana --sample 500 --random
    """
    from .annotate_app import run_annotate

    def ready(url: str, total: int, scan: dict) -> None:
        click.echo(
            f"labelling {total} completions of scan {scan['name']!r} as human:{annotator}: open {url} (Ctrl-C to stop)"
        )
        sys.stdout.flush()

    run_annotate(
        open_database(db_url),
        annotator,
        scan_name,
        params_id,
        sample=sample,
        overlap=overlap,
        seed=seed,
        at_random=at_random,
        host=host,
        port=port,
        token=token,
        ready=ready,
    )
    click.echo("stopped; every answer given is stored", err=True)


@cli.command("evaluate-tagger", context_settings=CONTEXT)
@click.option(
    "--tagger",
    "tagger_spec",
    required=True,
    help="spacy:PATH (a train-tagger folder) or spacy:PACKAGE (an installed pipeline).",
)
@click.option(
    "--tagger-name", default=None, help="The tagger's name in the database [default: the folder or package name]."
)
@click.option(
    "--dataset", required=True, help="A UD directory, a .conllu file or a HF id: the treebank to measure it on."
)
@click.option(
    "--split",
    default=DEFAULT_SPLIT,
    show_default=True,
    help="Split to measure on (words the tagger was not trained on).",
)
@click.option(
    "-o", "--output", default=None, type=click.Path(dir_okay=False), help="Also write the confusion here (JSON counts)."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@db_option
def evaluate_tagger(tagger_spec, tagger_name, dataset, split, output, no_progress, db_url):
    """Measure a tagger's confusion (true UPOS -> its UPOS) on a treebank's raw text and store it.

    The words are tagged through the same span lookup `label` uses on completions. The counts go
    into the tagger's row in the database (registered if new), with the same counts per word type,
    where `analyze` finds them to correct each candidate's labels with its own word's confusion;
    -o writes them as the JSON `analyze --tagger-confusion` reads.

    \b
    Example:
        python cli.py evaluate-tagger --tagger spacy:en_core_web_trf \\
            --dataset ../shared/data/ud_english_ewt --split validation
    """
    from .train_tagger import run_evaluate_tagger

    name, accuracy, confusion = run_evaluate_tagger(
        open_database(db_url), tagger_spec, tagger_name, dataset, split, output, progress=not no_progress
    )
    click.echo(
        f"tagger {name!r} on {dataset} {split}: UPOS accuracy {accuracy['raw_text']:.4f} on raw text "
        f"({accuracy['words']} words, {accuracy['unlabelled']} not labelled); confusion stored with the tagger"
        + (f" and written to {output}" if output else "")
    )
    top = ", ".join(f"{t}->{p} {n}" for t, p, n in confusion.top_confusions())
    click.echo(f"most frequent confusions: {top or 'none'}")


@cli.command(context_settings=CONTEXT)
@click.option(
    "--workdir",
    default="demo_out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the model, probe, database and export go.",
)
@click.option("--db", "db_url", default=None, help="Database URL [default: sqlite:///WORKDIR/posresample.db].")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option(
    "--model",
    default=None,
    help="A real model instead of the random tiny one: a .gguf file (converted "
    "once into the cache), a model folder or a Hub id. The probe is then fit on half the sample and the "
    "other half is scanned.",
)
@click.option(
    "--max-jobs",
    type=COUNT,
    default=None,
    help="Sample at most N candidates (a random part of them) [default: all with the tiny model, 8 with --model].",
)
@generation_options
def demo(workdir, db_url, no_progress, model, max_jobs, num_samples, max_new_tokens, temperature, top_p, top_k, seed):
    """Run scan -> worker -> export -> label -> analyze offline on a tiny random Gemma 2 (or --model).

    Builds a tokenizer trained here, a randomly initialised tiny Gemma2ForCausalLM, a probe fit on
    its activations and a spaCy tagger trained on a bundled CoNLL-U sample; needs no download.
    With --model, a real model's probe is fit on half the sample and the other half is scanned.

    \b
    Examples:
        python cli.py demo --workdir demo_out
        python cli.py demo --workdir demo_gemma3 --model gemma-3-270m-q4_k_m.gguf --num-samples 16
    """
    from .demo import run_demo

    params = GenerationParams(DEFAULT_MODEL, temperature, top_p, top_k, max_new_tokens, num_samples, seed).validate()
    if no_progress:
        silence_library_progress()
    r = run_demo(workdir, db_url, params, progress=not no_progress, model=model, max_jobs=max_jobs)
    url = r["db_url"]
    what = "random tiny Gemma 2, tokenizer trained here" if model is None else f"layer {r['layer']}"
    click.echo(f"""demo done in {r["workdir"]}/
  model        {r["model"]}  ({what})
  probe        {r["probe"]}
  candidates   {r["candidates"]}
  completions  {r["completions"]}
  export       {r["export"]}  ({r["records"]} records)
  tagger       {r["tagger"]}  (spaCy, trained on the sample)
  labels       {r["labels"]}
  report       {r["report"]}
  database     {url}
Try:
  python cli.py status --db {url}
  sqlite3 {url.removeprefix("sqlite:///")} 'select finish_reason, count(*) from completions group by 1'""")


def _command_paths(group=None, prefix=()):
    group = group or cli
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _command_paths(command, prefix + (name,))
        else:
            yield prefix + (name,)


def full_help_markdown() -> str:
    """docs/cli.md's "Full help" section: the top-level --help and every command's."""
    from click.testing import CliRunner

    parts = ["## Full help\n"]
    for path in [(), *_command_paths()]:
        result = CliRunner().invoke(cli, [*path, "--help"], prog_name="posresample", terminal_width=100)
        parts.append(f"\n```\n$ python cli.py {' '.join(path)} --help\n{result.output.rstrip()}\n```\n")
    return "".join(parts)


def main():
    cli(prog_name=os.environ.get("POSRESAMPLE_PROG", "posresample"))


if __name__ == "__main__":
    main()
