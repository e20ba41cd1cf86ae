"""analyze: where the probe is unsure, is the word genuinely ambiguous given its prefix?

Reads each candidate's labels (the `empirical_labels` view) and the candidates, then builds two
views. The corrected view leads (stats/corrected_view.py): the tagger's confusion and the sampling noise are
modelled, each candidate gets a corrected distribution with intervals, a p-value for the probe and
a verdict, and the study's shares and divergences estimate the population's values. The raw view
(stats/raw_view.py) takes the tagger's labels at face value, as the research scripts did. `report.py`
turns the result into CSV, JSON, plots and one HTML page.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select, text

from . import db
from .config import DEFAULT_MIN_LABELLED
from .data import UPOS_NAMES, K
from .errors import ConfigError, DatabaseError
from .schema import candidate_labels, candidates, completions, jobs, labels, taggers
from .stats import corrected_view, metrics, raw_view, verdict
from .stats.confusion import Confusion, PerCandidate, parse_confusion, rows_of
from .stats.word_confusion import WordConfusions

log = logging.getLogger(__name__)
EXAMPLES_PER_LABEL = 5  # completions per (candidate, label) embedded in the HTML report
AMBIGUOUS_BELOW = raw_view.RAW_AMBIGUOUS_BELOW


@dataclass
class Analysis:
    scan: dict
    params_id: int
    tagger: dict
    min_labelled: int
    rows: list[dict]  # per candidate, every number (candidates.csv)
    summary: dict  # summary.json
    probe: np.ndarray  # [N, K]
    empirical: np.ndarray  # [N, K] the raw shares of the labels
    corrected: np.ndarray  # [N, K] the maximum-likelihood distribution behind them
    examples: dict = field(default_factory=dict)  # candidate id -> {label: [[suffix, start, end], ...]}


def load(engine, scan_name: str | None, tagger_name: str | None, params_id: int | None):
    """The scan, params, tagger, the candidates, per candidate with labels its empirical counts, and
    per candidate the tagger on its original sentence: {candidate id: (upos, the tagger's word)}."""
    from .scan_store import pick_params, pick_scan

    with db.read(engine) as conn:
        scan = pick_scan(conn, scan_name)
        params = pick_params(conn, scan["id"], params_id)
        tagger = pick_tagger(conn, tagger_name)
        cands = (
            conn.execute(select(candidates).where(candidates.c.scan_id == scan["id"]).order_by(candidates.c.id))
            .mappings()
            .all()
        )
        counts = conn.execute(
            text(
                "SELECT e.candidate_id, e.upos, e.count FROM empirical_labels e JOIN candidates c ON c.id = "
                "e.candidate_id "
                "WHERE c.scan_id = :scan AND e.params_id = :params AND e.tagger_id = :tagger"
            ),
            {"scan": scan["id"], "params": params["id"], "tagger": tagger["id"]},
        ).all()
        original = {
            cid: (upos, word)
            for cid, upos, word in conn.execute(
                select(candidate_labels.c.candidate_id, candidate_labels.c.upos, candidate_labels.c.word).where(
                    candidate_labels.c.tagger_id == tagger["id"]
                )
            )
        }
        scan["sampled"] = conn.execute(
            select(func.count())
            .select_from(jobs)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(candidates.c.scan_id == scan["id"], jobs.c.params_id == params["id"], jobs.c.state == "done")
        ).scalar_one()
        # every label of these completions by status: those not ok are missing from the counts above
        scan["label_statuses"] = dict(
            conn.execute(
                select(labels.c.status, func.count())
                .join(completions, completions.c.id == labels.c.completion_id)
                .join(jobs, jobs.c.id == completions.c.job_id)
                .join(candidates, candidates.c.id == jobs.c.candidate_id)
                .where(
                    candidates.c.scan_id == scan["id"],
                    jobs.c.params_id == params["id"],
                    labels.c.tagger_id == tagger["id"],
                )
                .group_by(labels.c.status)
            ).all()
        )
    per_candidate: dict[int, np.ndarray] = {}
    for cid, upos, n in counts:
        if not (isinstance(upos, int) and 0 <= upos < K):
            raise DatabaseError(
                f"candidate {cid} has labels with upos {upos!r}, not a UPOS id 0-{K - 1}: "
                "the labels table was edited by hand; run `cli.py label` into a fresh database"
            )
        per_candidate.setdefault(cid, np.zeros(K))[upos] = n
    return scan, params, tagger, [dict(c) for c in cands], per_candidate, original


def other_taggers(engine, scan: dict, params: dict, tagger: dict, kept: list[dict], min_labelled: int) -> list:
    """The machine taggers other than `tagger` that labelled these completions and carry a stored
    confusion: [(tagger, counts [M, K], which of `kept` they are [M])], the candidates with at least
    `min_labelled` of their ok labels (a sensitivity row each)."""
    with db.read(engine) as conn:
        rows = [
            dict(r)
            for r in conn.execute(select(taggers).order_by(taggers.c.id)).mappings()
            if r["id"] != tagger["id"] and not r["name"].startswith("human:") and r["confusion"]
        ]
        return _with_enough(conn, scan, kept, min_labelled, [(other, params["id"], other["id"]) for other in rows])


def other_params(engine, scan: dict, params: dict, tagger: dict, kept: list[dict], min_labelled: int) -> list:
    """The scan's other generation params whose completions this tagger labelled: [(params row,
    counts [M, K], which of `kept` they are [M])], the candidates with at least `min_labelled` ok
    labels under both (the same candidates sampled again, at another temperature, say)."""
    from .schema import generation_params

    with db.read(engine) as conn:
        rows = [
            dict(r)
            for r in conn.execute(select(generation_params).order_by(generation_params.c.id)).mappings()
            if r["id"] != params["id"]
        ]
        return _with_enough(conn, scan, kept, min_labelled, [(other, other["id"], tagger["id"]) for other in rows])


def _with_enough(conn, scan: dict, kept: list[dict], min_labelled: int, wanted: list) -> list:
    """For each (key, params id, tagger id) of `wanted`: (key, counts [M, K], which of `kept` they
    are [M]), the candidates with at least `min_labelled` ok labels under those params and tagger."""
    index = {c["id"]: i for i, c in enumerate(kept)}
    out = []
    for key, params_id, tagger_id in wanted:
        counts = np.zeros((len(kept), K))
        for cid, upos, n in conn.execute(
            text(
                "SELECT e.candidate_id, e.upos, e.count FROM empirical_labels e JOIN candidates c ON c.id = "
                "e.candidate_id WHERE c.scan_id = :scan AND e.params_id = :params AND e.tagger_id = :tagger"
            ),
            {"scan": scan["id"], "params": params_id, "tagger": tagger_id},
        ):
            if cid in index and isinstance(upos, int) and 0 <= upos < K:
                counts[index[cid], upos] = n
        enough = np.flatnonzero(counts.sum(axis=1) >= min_labelled)
        if len(enough):
            out.append((key, counts[enough], enough))
    return out


def compare_params(counts, q, classes, lead, seed: int, others: list, refits: int | None = None) -> list[dict]:
    """Each other generation params' comparison on the candidates sampled under both (`other_params`),
    its intervals widened by `refits` replicate studies of each side as the headline's are."""
    out = []
    for other, other_counts, which in others:
        compared = corrected_view.compare_samplers(
            counts[which], other_counts, q[which], classes, rows_of(lead, which), seed, refits=refits
        )
        out.append(
            {
                "params_id": other["id"],
                **{k: other[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens")},
                "candidates": len(which),
                **compared,
            }
        )
    return out


def params_lines(summary: dict) -> list[str]:
    """One line per other generation params compared: the ambiguous share and the second reading's
    mass under it and here, on the same candidates."""
    lines = []
    for r in summary.get("other_params") or []:
        this, other, diff = r["this"], r["other"], r["difference"]
        a, b = other["genuinely_ambiguous"]["share"], this["genuinely_ambiguous"]["share"]
        lo, hi = diff["genuinely_ambiguous"]["ci95"]
        lines.append(
            f"sampled again at temperature {r['temperature']:g}, top-p {r['top_p']:g} (params {r['params_id']}) on "
            f"the same {r['candidates']} candidates: genuinely ambiguous {a:.0%} there against {b:.0%} here "
            f"(here - there {b - a:+.0%}, 95% CI {lo:+.0%} to {hi:+.0%}); second reading's mean mass "
            f"{other['second_mass']['estimate']:.3f} against {this['second_mass']['estimate']:.3f}"
        )
    return lines


def sample_description(scan: dict, scanned: int) -> dict:
    """Which candidates were sampled, and so what the study's shares are estimates of."""
    order = scan.get("job_order") or "dataset"
    sampled = scan["sampled"]
    if sampled >= scanned:
        reading = f"every candidate of the scan was sampled: the shares are for its {scanned} candidates"
    elif order == "random":
        reading = (
            f"{sampled} of the scan's {scanned} candidates, drawn in the scan's random order: a simple random "
            f"sample, so the shares and means estimate all {scanned}"
        )
    else:
        reading = (
            f"the first {sampled} of {scanned} candidates in dataset order: not a random sample, so the "
            "shares describe these candidates only"
        )
    return {
        "order": order,
        "order_seed": scan.get("order_seed"),
        "random_sample": order == "random" or sampled >= scanned,
        "reading": reading,
    }


def pick_tagger(conn, name: str | None) -> dict:
    rows = [dict(r) for r in conn.execute(select(taggers).order_by(taggers.c.id)).mappings()]
    if not rows:
        raise DatabaseError("no labels yet: run `cli.py label --tagger ...` first")
    if name is None:
        machine = [r for r in rows if not r["name"].startswith("human:")]
        if len(machine) != 1:
            have = ", ".join(r["name"] for r in rows)
            raise ConfigError(f"the database holds labels of {len(rows)} taggers ({have}): pick one with --tagger")
        return machine[0]
    match = [r for r in rows if r["name"] == name]
    if not match:
        raise ConfigError(f"no tagger named {name!r} (have: {', '.join(r['name'] for r in rows)})")
    return match[0]


def probe_matrix(cands: list[dict], classes: list[int]) -> np.ndarray:
    """Each candidate's probe probabilities on all K UPOS ids (zeros for classes the probe lacks)."""
    q = np.zeros((len(cands), K))
    for c in cands:
        probs = c["probe_probs"]
        if (
            not isinstance(probs, list)
            or len(probs) != len(classes)
            or not all(isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x <= 1 for x in probs)
        ):
            raise DatabaseError(
                f"candidate {c['id']}: probe_probs is not {len(classes)} probabilities (the scan's probe "
                "classes): the candidates table was edited by hand"
            )
    q[:, classes] = np.array([c["probe_probs"] for c in cands], dtype=np.float64)
    return q


def label_prior(scan: dict) -> tuple[np.ndarray | None, str]:
    """The UPOS distribution of the scanned split's words (excluded labels left out); None where the
    dataset cannot be read here (the baselines then use the fitting half's true labels)."""
    from .data import load_sentences
    from .errors import DatasetError

    try:
        sentences = load_sentences(scan["dataset"], scan["split"])
    except DatasetError:
        return None, "true labels of the fitting half of the candidates (the scanned split could not be read)"
    counts = np.zeros(K)
    for s in sentences:
        for _form, upos in s.words:
            counts[upos] += 1
    counts[list(scan["excluded_labels"])] = 0
    return counts / counts.sum(), f"words of {scan['split']} in {scan['dataset']}"


def tagged_on_original(original: dict, cands: list[dict]) -> np.ndarray:
    """[N] the tagger's UPOS id of each candidate's word in its original sentence (-1: none)."""
    upos = [original.get(c["id"], (None, None))[0] for c in cands]
    return np.array([-1 if u is None else u for u in upos], dtype=np.int64)


def word_confusions(conf: Confusion, tagger: dict, given: bool) -> WordConfusions | None:
    """The per-word confusions the headline corrects with, where the stored confusion has per-word
    counts; None (the class rows) where it has none, where they are too few to fit, or where they
    were measured on a split named train (`evaluate-tagger --split train`: words the tagger saw)."""
    if not conf.by_word or conf.exact:
        return None
    if not given and set(tagger.get("accuracy") or {}) == {"train"}:
        log.warning("the tagger's confusion was measured on its training split: correcting with its class rows only")
        return None
    fitted = WordConfusions.fit(conf)
    if fitted is None:
        log.info("the confusion's per-word counts are too few to say how words differ: correcting with its class rows")
    return fitted


def tagger_confusion(tagger: dict, given: Confusion | None) -> Confusion:
    """The confusion to correct with: given (a file, or measured against human labels), else the one
    stored with the tagger, else none (with a warning: the labels are then taken as the truth)."""
    if given is not None:
        return given
    if tagger.get("confusion"):
        return parse_confusion(tagger["confusion"], f"the confusion stored with tagger {tagger['name']}")
    if tagger["name"].startswith("human:"):
        return Confusion.identity()
    log.warning(
        "tagger %r has no confusion matrix (train-tagger or evaluate-tagger measures one; "
        "--tagger-confusion gives one): its labels are taken as the truth",
        tagger["name"],
    )
    return Confusion.identity()


def samplers_of(engine, scan: dict, params: dict) -> list[dict]:
    """How the params' done jobs were sampled (export's `samplers`); a warning where they mix dtypes:
    a bf16 and a float32 sampler are two nearby samplers (docs/design.md, "The sampling dtype"), and
    a verdict over both is one of their mixture."""
    from .scan_store import samplers_used

    with db.read(engine) as conn:
        used = samplers_used(conn, scan["id"], params)
    jobs_by_dtype: dict[str, int] = {}
    for entry in used:
        dtype = (entry["sampler"] or {}).get("dtype")
        if dtype is not None:
            jobs_by_dtype[dtype] = jobs_by_dtype.get(dtype, 0) + entry["jobs"]
    if len(jobs_by_dtype) > 1:
        log.warning(
            "the continuations of generation params %d were sampled in several dtypes (%s): the verdict is "
            "of their mixture; sample a study in one (worker --dtype)",
            params["id"],
            ", ".join(f"{dtype}: {n} jobs" for dtype, n in sorted(jobs_by_dtype.items())),
        )
    return used


def run_analyze(
    engine,
    scan_name: str | None = None,
    tagger_name: str | None = None,
    params_id: int | None = None,
    min_labelled: int = DEFAULT_MIN_LABELLED,
    seed: int = 0,
    with_examples: bool = True,
    confusion: Confusion | None = None,
    confusion_from: str | None = None,
    refits: int | None = None,
    progress: bool = False,
) -> Analysis:
    """`confusion`: the tagger's confusion as given (a file); `confusion_from`: measure it against
    that annotator's labels on these completions (human:NAME) instead of the treebank's; `refits`:
    the parametric bootstrap's replicate studies [default: corrected_view.REFITS]; `progress`: a bar of them."""
    from . import agreement

    scan, params, tagger, cands, per_candidate, original = load(engine, scan_name, tagger_name, params_id)
    if confusion_from is not None:
        if confusion is not None:
            raise ConfigError("give either --tagger-confusion or --confusion-from, not both")
        confusion = agreement.confusion_from(engine, scan["id"], params["id"], tagger, confusion_from)
    kept = [c for c in cands if per_candidate.get(c["id"], np.zeros(K)).sum() >= min_labelled]
    if not kept:
        raise DatabaseError(
            f"no candidate of scan {scan['name']!r} has {min_labelled} or more labelled completions "
            f"by tagger {tagger['name']!r}: run `cli.py label`, or lower --min-labelled"
        )
    classes = list(scan["probe_classes"])
    counts = np.stack([per_candidate[c["id"]] for c in kept])  # [N, K]
    n = counts.sum(axis=1)
    p = counts / n[:, None]
    q = probe_matrix(kept, classes)
    true = np.array([c["true_label"] for c in kept])
    orig = tagged_on_original(original, kept)
    words = [original.get(c["id"], (None, None))[1] for c in kept]
    conf = tagger_confusion(tagger, confusion).covering(counts.sum(axis=0) > 0)
    if conf.filled:
        log.warning("%s", filled_warning(conf))
    by_word = word_confusions(conf, tagger, given=confusion is not None)
    lead = by_word.for_candidates(words) if by_word else conf  # the headline's confusion (docs/design.md)
    prior, prior_source = label_prior(scan)
    others = other_taggers(engine, scan, params, tagger, kept, min_labelled)
    resampled = other_params(engine, scan, params, tagger, kept, min_labelled)
    samplers = samplers_of(engine, scan, params)

    def variants() -> tuple[list[dict], list[dict]]:
        return (
            sensitivity_variants(counts, q, classes, conf, true, orig, scan, seed, others, lead, words),
            compare_params(counts, q, classes, lead, seed, resampled, refits),
        )

    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    # the sensitivity rows need only the inputs: where memory allows a deconvolution beside the
    # headline's, they start now, on the core the headline's first, serial steps leave idle. One
    # BLAS thread throughout (as corrected_view.estimate runs): the limit is the process's, so a
    # thread leaving its own limit must find this one, not BLAS's default, in place
    limits = threadpool_limits(limits=1, user_api="blas")
    early = ThreadPoolExecutor(max_workers=1)
    varied_early = early.submit(variants) if corrected_view.refit_threads(2, len(counts)) >= 2 else None

    def meanwhile() -> tuple:  # the raw view, the sensitivity rows and the examples: beside the refits, or after them
        floor = raw_view.floors(q, n, classes, seed)
        raw_parts = (
            floor,
            raw_view.raw_summary(p, q, n, true, orig, classes, prior, floor, seed),
            raw_view.out_of_probe(p, q, classes, seed),
            raw_view.research_block(p, q, true, classes, seed),
        )
        varied = varied_early.result() if varied_early is not None else variants()
        corrected_view.trim_memory()  # the examples are loaded last: at 16,000 candidates they are 200 MB of rows
        return (
            *raw_parts,
            varied,
            load_examples(engine, kept, tagger["id"], params["id"], params["model"]) if with_examples else {},
        )

    try:
        fixed = corrected_view.estimate(
            counts, q, classes, lead, seed, refits=refits, meanwhile=meanwhile, progress=progress
        )
    finally:
        early.shutdown(wait=True, cancel_futures=True)
        limits.restore_original_limits()
    floor, raw, out_of_probe, research, (varied, compared), examples = fixed.meanwhile
    corrected_summary = fixed.summary
    corrected_view.trim_memory()
    sensitivity = [
        {
            "confusion": "per word" if by_word else "stored",
            "source": lead.source,
            "verdict": corrected_summary["verdict"],
            "intervals": "two-stage and refits",
            "headline": True,
        }
    ] + varied
    rows = per_candidate_rows(kept, p, q, n, true, orig, floor, fixed, classes)
    on_candidates = tagger_on_candidates(
        true,
        orig,
        tagger,
        np.array([c["true_label"] for c in cands]),
        tagged_on_original(original, cands),
    )
    summary = {
        "headline": (filled_warning(conf) + " " if conf.filled else "")
        + headline(len(kept), corrected_summary, len(cands), scan),
        "confusion_filled": [UPOS_NAMES[k] for k in conf.filled],
        "tagger_on_candidates": on_candidates,
        "word_confusion": by_word.describe(words) if by_word else None,
        "sensitivity": sensitivity,
        "sensitivity_line": sensitivity_line(sensitivity),
        "ambiguous_by_threshold": corrected_summary["ambiguous_by_threshold"],
        "other_params": compared,
        "estimand": ESTIMAND.format(**{k: params[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens")}),
        "verdict_counts": {v: int(sum(r["verdict"] == v for r in rows)) for v in verdict.VERDICTS},
        "flow": {
            "scanned": len(cands),
            "sampled": scan["sampled"],
            "labelled_enough": len(kept),
            "analysed": len(kept),
        },
        "label_statuses": label_statuses(scan["label_statuses"]),
        "sample": sample_description(scan, len(cands)),
        "verdict": corrected_summary["verdict"],
        "probe_contradicted_fdr05": corrected_summary["probe_contradicted_fdr05"],
        "corrected": corrected_summary,
        "raw": raw,
        "out_of_probe": out_of_probe,
        "research_scripts": research,
        "fitted_temperature": {
            "corrected": corrected_summary["fitted_temperature"],
            "raw": raw["baselines"]["fitted_temperature"],
        },
        "scan": scan["name"],
        "split": scan["split"],
        "model": scan["model"],
        "layer": scan["layer"],
        "generation_params_id": params["id"],
        "samplers": samplers,
        "tagger": {k: tagger[k] for k in ("name", "spec", "accuracy")},
        "candidates_in_scan": len(cands),
        "candidates_analysed": len(kept),
        "min_labelled": min_labelled,
        "labels_analysed": int(n.sum()),
        "kl_smoothing": metrics.KL_EPSILON,
        "prior_source": prior_source,
        "breakdowns": {key: breakdown(rows, key, p, q, true, classes) for key in ("true_label", "probe_top2")},
        "human_labels": agreement.summary(engine, scan["id"], params["id"], tagger),
    }
    return Analysis(scan, params["id"], tagger, min_labelled, rows, summary, q, p, fixed.point, examples)


ESTIMAND = (
    "each candidate's distribution of the target word's UPOS over the model's continuations as sampled "
    "(temperature {temperature}, top-p {top_p}, top-k {top_k}, {max_new_tokens} new tokens): a tempered, "
    "truncated distribution, not the model's own; 'genuinely ambiguous' is a second reading of at least 0.10 "
    "of it (ambiguous_by_threshold varies 0.10)"
)
HARD_WORD_PRIOR = 20.0  # pseudo-words per row drawn from the treebank confusion when the candidates' own rows are short


def tagger_on_candidates(
    true: np.ndarray, orig: np.ndarray, tagger: dict, scan_true: np.ndarray | None = None, scan_orig=None
) -> dict:
    """How often the tagger gives the treebank's label to the candidates' words in their original
    sentences (the words in question, unlike the treebank's average), and to every probe-uncertain
    token of the scan (`scan_true`, `scan_orig`: all its candidates, sampled or not), beside its
    all-words accuracy (train-tagger's dev, or evaluate-tagger's split)."""

    def measured(true, orig) -> dict:
        tagged = orig >= 0
        right = float((orig[tagged] == true[tagged]).sum())
        found = metrics.jeffreys_interval(right, int(tagged.sum())) if tagged.any() else {"share": None, "ci95": None}
        return {"accuracy": found["share"], "ci95": found["ci95"], "words": int(tagged.sum())}

    accuracy = tagger.get("accuracy") or {}
    dev = accuracy.get("dev") or accuracy.get("validation") or {}
    out = measured(true, orig) | {"all_words_accuracy": dev.get("raw_text") if isinstance(dev, dict) else None}
    if scan_true is not None:
        out["uncertain_tokens"] = measured(scan_true, scan_orig)
    return out


def label_statuses(counts: dict[str, int]) -> dict:
    """The tagger's labels of the sampled completions by status, and each status's share: the ones not
    ok (no span for the target, an empty or non-UPOS tag) are missing from every count analysed."""
    total = sum(counts.values())
    return {
        "labels": total,
        "counts": dict(sorted(counts.items())),
        "rates": {status: n / total for status, n in sorted(counts.items())} if total else {},
    }


def flow_line(summary: dict) -> str:
    """The accounting in one line: candidates scanned -> sampled -> analysed, and the labels by status."""
    f, st = summary["flow"], summary["label_statuses"]
    rates = ", ".join(f"{status} {rate:.1%}" for status, rate in st["rates"].items())
    return (
        f"candidates: {f['scanned']:,} scanned -> {f['sampled']:,} sampled -> {f['labelled_enough']:,} with "
        f"{summary['min_labelled']} or more ok labels, analysed; labels: {st['labels']:,} ({rates or 'none'})"
    )


def sensitivity_variants(
    counts,
    q,
    classes,
    conf: Confusion,
    true,
    orig,
    scan: dict,
    seed: int,
    others: list = (),
    lead: Confusion | PerCandidate | None = None,
    words: list | None = None,
) -> list[dict]:
    """The sensitivity table's rows past the first (the headline's confusion, `lead`: the per-word one
    where the stored confusion carries per-word counts, else the stored one): the headline shares
    again under other confusions: the stored all-words one (where it is not the headline's), the
    headline's errors x1.5 and x2, and the tagger's confusion on the candidates' own words (their
    original sentences, gold against tagged), shrunk toward the stored one; and, for each other
    machine tagger that labelled these completions (`other_taggers`), its own labels corrected with
    its own stored confusion (per word where it has per-word counts). A result that holds across
    the rows is the claim."""
    lead = conf if lead is None else lead
    jobs: list[tuple[str, str, np.ndarray, np.ndarray, Confusion | PerCandidate]] = []
    if lead is not conf:
        jobs.append(("stored", f"{conf.source} (all words)", counts, q, conf))
    if not conf.exact:
        for name, variant in (("errors x1.5", lead.scaled_errors(1.5)), ("errors x2", lead.scaled_errors(2.0))):
            jobs.append((name, variant.source, counts, q, variant))
        tagged = orig >= 0
        if scan["split"] != "train" and tagged.any():  # never words the tagger may have been trained on
            hard = Confusion.from_pairs(true[tagged].tolist(), orig[tagged].tolist(), "the candidates' own words")
            shrunk = hard.shrunk_toward(conf, HARD_WORD_PRIOR)
            jobs.append(("hard words", shrunk.source, counts, q, shrunk))
    for other, other_counts, which in others:
        theirs = parse_confusion(other["confusion"], f"the confusion stored with tagger {other['name']}")
        theirs = theirs.covering(other_counts.sum(axis=0) > 0)
        if theirs.by_word and words is not None:
            fitted = WordConfusions.fit(theirs)
            theirs = fitted.for_candidates([words[i] for i in which]) if fitted else theirs
        source = f"{theirs.source}; its own labels, {len(which)} candidates"
        jobs.append((f"tagger {other['name']}", source, other_counts, q[which], theirs))
    if not jobs:
        return []
    from concurrent.futures import ThreadPoolExecutor

    # side by side on the cores (the sparse products and logs let go of the GIL), as far as memory allows
    with ThreadPoolExecutor(max_workers=corrected_view.refit_threads(len(jobs), len(counts))) as pool:
        shares = list(pool.map(lambda j: corrected_view.population_shares(j[2], j[3], classes, j[4], seed), jobs))
    return [
        {"confusion": name, "source": source, "verdict": share, "intervals": "two-stage"}
        for (name, source, *_), share in zip(jobs, shares)
    ]


def sensitivity_line(rows: list[dict]) -> str:
    ambiguous = [r["verdict"]["genuinely_ambiguous"]["share"] for r in rows]
    others = ", ".join(f"{r['confusion']} {r['verdict']['genuinely_ambiguous']['share']:.0%}" for r in rows[1:])
    if not others:
        return "sensitivity: no confusion to vary (the labels are taken as the truth)"
    return (
        f"sensitivity: genuinely ambiguous {ambiguous[0]:.0%} with the {rows[0]['confusion']} confusion; {others} "
        f"(moves by up to {max(abs(a - ambiguous[0]) for a in ambiguous):.0%})"
    )


def filled_warning(conf: Confusion) -> str:
    names = ", ".join(UPOS_NAMES[k] for k in conf.filled)
    return (
        f"Warning: the tagger's confusion ({conf.source}) has no row for {names}, labels the tagger gave: "
        "those rows are taken as the identity (the tagger right on such words), so the correction is partial."
    )


def headline(n: int, s: dict, scanned: int | None = None, scan: dict | None = None) -> str:
    v = s["verdict"]

    def pct(entry):
        lo, hi = entry["ci95"]
        return f"{entry['share']:.0%} ({lo:.0%}-{hi:.0%})"

    whole = ""
    if scanned is not None and scan is not None and scan["sampled"] < scanned:
        random = (scan.get("job_order") or "dataset") == "random"
        whole = (
            f" (a random sample of the scan's {scanned}: the shares estimate all {scanned})"
            if random
            else f" (the first sampled of the scan's {scanned}, in dataset order: not a random sample)"
        )
    return (
        f"Of {n} uncertain tokens{whole}, {pct(v['genuinely_ambiguous'])} are genuinely ambiguous, "
        f"{pct(v['probe_underconfident'])} have one reading the probe was merely unsure of, "
        f"{pct(v['probe_wrong'])} have one reading the probe got wrong, and {pct(v['undetermined'])} are neither; "
        f"the labels contradict the probe for {pct(s['probe_contradicted_fdr05'])} (FDR 5%)."
    )


def per_candidate_rows(cands, p, q, n, true, orig, floor: dict, fixed, classes) -> list[dict]:
    tv, jsd, kld, bri = (
        metrics.total_variation(p, q),
        metrics.js(p, q),
        metrics.kl_on(p, q, classes),
        metrics.brier(q, p),
    )
    hp, hq = metrics.entropy(p), metrics.entropy(q)
    majority, pred = p.argmax(axis=1), q.argmax(axis=1)
    top2 = np.argsort(-q, axis=1, kind="stable")[:, :2]  # ties: the lower id first, as probe_pred
    outside = np.setdiff1d(np.arange(K), classes)
    with_mass = [k for k in range(K) if (fixed.point[:, k] > 0.005).any() or (p[:, k] > 0).any()]
    rows = []
    for i, c in enumerate(cands):
        row = {
            "candidate_id": c["id"],
            "dataset_idx": c["dataset_idx"],
            "sent_id": c["sent_id"],
            "target_position": c["target_position"],
            "target_token": c["target_token"],
            "prefix_text": c["prefix_text"],
            "sentence_text": c["sentence_text"],
            "n_labelled": int(n[i]),
            "true_label": UPOS_NAMES[true[i]],
            "probe_pred": UPOS_NAMES[pred[i]],
            "probe_max_prob": float(q[i].max()),
            "probe_top2": f"{UPOS_NAMES[top2[i, 0]]}/{UPOS_NAMES[top2[i, 1]]}",
            "verdict": verdict.VERDICTS[fixed.verdict[i]],
            "p_value": float(fixed.p_value[i]),
            "q_value": float(fixed.q_value[i]),
            "p_second_below_0.10": round(float(fixed.below[i, 0]), 5),
            "p_first_below_0.90": round(float(fixed.below[i, 1]), 5),
            "corrected_first": UPOS_NAMES[int(fixed.point[i].argmax())],
            "empirical_majority": UPOS_NAMES[majority[i]],
            "empirical_majority_share": float(p[i].max()),
            "out_of_probe_share": float(p[i, outside].sum()),
            "tagger_on_original": UPOS_NAMES[orig[i]] if orig[i] >= 0 else None,
            "tv": float(tv[i]),
            "tv_noise_floor": float(floor["tv"][i]),
            "js": float(jsd[i]),
            "kl": float(kld[i]),
            "kl_noise_floor": float(floor["kl"][i]),
            "brier": float(bri[i]),
            "entropy_empirical": float(hp[i]),
            "entropy_probe": float(hq[i]),
            "probe_agrees_with_majority": bool(pred[i] == majority[i]),
            "majority_is_true_label": bool(majority[i] == true[i]),
            "probe_is_true_label": bool(pred[i] == true[i]),
        }
        for k in with_mass:
            name = UPOS_NAMES[k]
            row[f"corrected_{name}"] = round(float(fixed.point[i, k]), 4)
            row[f"corrected_{name}_lo"] = round(float(fixed.lo[i, k]), 4)
            row[f"corrected_{name}_hi"] = round(float(fixed.hi[i, k]), 4)
        row["empirical"] = {UPOS_NAMES[k]: round(float(p[i, k]), 4) for k in np.flatnonzero(p[i])}
        row["probe"] = {
            UPOS_NAMES[k]: round(float(q[i, k]), 4) for k in np.argsort(-q[i], kind="stable")[:6] if q[i, k] > 0.005
        }
        row["corrected"] = {
            UPOS_NAMES[k]: [
                round(float(fixed.point[i, k]), 4),
                round(float(fixed.lo[i, k]), 4),
                round(float(fixed.hi[i, k]), 4),
            ]
            for k in np.argsort(-fixed.point[i], kind="stable")[:6]
            if fixed.hi[i, k] > 0.01
        }
        rows.append(row)
    return rows


def breakdown(rows: list[dict], key: str, p, q, true, classes, top: int = 12) -> list[dict]:
    """Per true label or probe top-2 pair: counts, raw and corrected shares, and the research
    scripts' per-class Brier and KL."""
    research = raw_view.research_values(p, q, true, classes)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r[key], []).append(i)
    out = []
    for name, members in groups.items():
        g = [rows[i] for i in members]
        out.append(
            {
                key: name,
                "n": len(g),
                "mean_tv": float(np.mean([r["tv"] for r in g])),
                **{v: float(np.mean([r["verdict"] == v for r in g])) for v in verdict.VERDICTS},
                "raw_ambiguous_share": float(np.mean([r["empirical_majority_share"] < AMBIGUOUS_BELOW for r in g])),
                "majority_is_true_label": float(np.mean([r["majority_is_true_label"] for r in g])),
                "probe_is_true_label": float(np.mean([r["probe_is_true_label"] for r in g])),
                "research_brier": float(research["brier"][members].mean()),
                "research_kl_nats": float(research["kl"][members].mean()),
            }
        )
    return sorted(out, key=lambda r: -r["n"])[:top]


def load_examples(engine, cands: list[dict], tagger_id: int, params_id: int, model: str) -> dict:
    """Up to EXAMPLES_PER_LABEL completions per (candidate, label), for the report, fetched as such
    (a window function ranks them in the database: memory does not grow with the completions):
    [suffix, start, end], the text after the candidate's decoded prefix and the tagger's word at
    [start, end) of prefix + suffix ([continuation, -1, -1] where the tokenizer is not here)."""
    from .label import detokenizer

    detokenize = detokenizer(model)
    by_id = {c["id"]: c for c in cands}
    rank = (
        func.row_number()
        .over(
            partition_by=(jobs.c.candidate_id, labels.c.status, labels.c.upos_name), order_by=completions.c.sample_index
        )
        .label("rank")
    )
    ranked = (
        select(
            jobs.c.candidate_id,
            labels.c.upos_name,
            labels.c.status,
            labels.c.word,
            completions.c.text,
            completions.c.token_ids,
            rank,
        )
        .join(completions, completions.c.id == labels.c.completion_id)
        .join(jobs, jobs.c.id == completions.c.job_id)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(
            labels.c.tagger_id == tagger_id, jobs.c.params_id == params_id, candidates.c.scan_id == cands[0]["scan_id"]
        )
        .subquery()
    )
    out: dict[int, dict[str, list]] = {}
    with db.read(engine) as conn:
        rows = conn.execute(
            select(ranked).where(ranked.c.rank <= EXAMPLES_PER_LABEL).order_by(ranked.c.candidate_id, ranked.c.rank)
        )
        for cid, upos, status, word, continuation, token_ids, _rank in rows:
            if cid not in by_id:
                continue
            key = upos if status == "ok" else f"({status})"
            out.setdefault(cid, {}).setdefault(key, []).append(
                _example(detokenize, by_id[cid], word, continuation, token_ids)
            )
    return out


def _example(detokenize, cand: dict, word, continuation: str, token_ids) -> list:
    from .label import target_span

    if detokenize is None:
        return [continuation, -1, -1]
    prefix = cand["prefix_text"]
    full, span = target_span(detokenize, list(cand["prefix_token_ids"]), list(token_ids))
    if not full.startswith(prefix):
        return [continuation, -1, -1]
    if span is None:
        return [full[len(prefix) :], -1, -1]
    end = span[0] + len(word) if word and full[span[0] : span[0] + len(word)] == word else span[1]
    return [full[len(prefix) :], span[0], end]
