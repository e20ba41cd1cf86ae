"""Studies with a known truth: each candidate's true UPOS distribution, a probe that reads it through
noise, a tagger's confusion, labels drawn through that confusion, written to a database through
the project's own store functions. Used by the tests (small studies) and bench/verdict_coverage.py.

The population (one draw per candidate): 45% one reading; 15% one reading with a little of a
second (Beta(1, 12)); 32% two readings (Beta(2, 2) split); 8% three (Dirichlet(2, 2, 2)); and 6% of
all with some mass outside the probe's classes (INTJ or SYM, Beta(1.5, 15)). The probe's logits are
tau * log(pi + 0.03) plus Gaussian noise (tau uniform in [0.4, 1.6]), over the research probe's 15
classes, kept when its max probability is under 0.95, as a scan keeps candidates. The tagger: per
class accuracies around EWT's (0.40 for X to 0.99 for PUNCT), most errors on the classes it is
usually confused with, a few spread over all; the confusion `analyze` gets is counted on a
treebank-sized sample of words drawn from it (EWT dev's class sizes), as train-tagger measures one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posresample.data import UPOS_IDS, UPOS_NAMES, K

PROBE_CLASSES = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17]
ROW_WORDS = dict(
    NOUN=4100,
    PUNCT=3000,
    VERB=2600,
    PRON=2200,
    ADP=2000,
    DET=1900,
    PROPN=1900,
    ADJ=1800,
    AUX=1500,
    ADV=1200,
    CCONJ=800,
    PART=600,
    NUM=400,
    SCONJ=400,
    X=150,
    SYM=100,
    INTJ=120,
)
ACCURACY = dict(
    NOUN=0.93,
    PUNCT=0.99,
    VERB=0.92,
    PRON=0.97,
    ADP=0.95,
    DET=0.97,
    PROPN=0.85,
    ADJ=0.88,
    AUX=0.96,
    ADV=0.88,
    CCONJ=0.99,
    PART=0.93,
    NUM=0.95,
    SCONJ=0.75,
    X=0.4,
    SYM=0.7,
    INTJ=0.8,
)
CONFUSED_WITH = dict(
    NOUN=("PROPN", "ADJ", "VERB"),
    VERB=("NOUN", "AUX", "ADJ"),
    PRON=("DET", "PROPN"),
    ADP=("SCONJ", "ADV", "PART"),
    DET=("PRON", "ADV"),
    PROPN=("NOUN", "ADJ", "X"),
    ADJ=("NOUN", "VERB", "ADV", "PROPN"),
    AUX=("VERB",),
    ADV=("ADJ", "ADP", "SCONJ"),
    CCONJ=("ADV",),
    PART=("ADP", "ADV"),
    NUM=("NOUN", "PROPN"),
    SCONJ=("ADP", "ADV"),
    X=("NOUN", "PROPN", "INTJ"),
    SYM=("PUNCT", "NOUN"),
    INTJ=("PROPN", "NOUN", "X"),
    PUNCT=("SYM",),
)
_WEIGHTS = np.array([ROW_WORDS.get(n, 0) for n in UPOS_NAMES], float)[PROBE_CLASSES]
CLASS_FREQUENCY = _WEIGHTS / _WEIGHTS.sum()  # a reading's class, by treebank frequency


def tagger_confusion() -> np.ndarray:
    """The true confusion, [K, K] row-stochastic: P(the tagger says l | the word is t)."""
    C = np.zeros((K, K))
    for name, accuracy in ACCURACY.items():
        t = UPOS_IDS[name]
        C[t, t] = accuracy
        others = CONFUSED_WITH[name]
        weights = 0.5 ** np.arange(len(others))
        for other, w in zip(others, weights / weights.sum()):
            C[t, UPOS_IDS[other]] += (1 - accuracy) * 0.85 * w
        C[t] += (1 - accuracy) * 0.15 / K
    C[UPOS_IDS["_"], UPOS_IDS["_"]] = 1.0
    return C / C.sum(axis=1, keepdims=True)


def treebank_counts(C: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What measuring the tagger on EWT dev's words would count: [K, K] (no `_` row: UD splits them)."""
    counts = np.zeros((K, K))
    for name, n in ROW_WORDS.items():
        counts[UPOS_IDS[name]] = rng.multinomial(n, C[UPOS_IDS[name]])
    return counts


def draw_truth(rng: np.random.Generator) -> np.ndarray:
    pi = np.zeros(K)
    first = PROBE_CLASSES[rng.choice(len(PROBE_CLASSES), p=CLASS_FREQUENCY)]
    others = [c for c in PROBE_CLASSES if c != first]
    u = rng.random()
    if u < 0.45:
        pi[first] = 1.0
    elif u < 0.60:
        e = rng.beta(1.0, 12.0)
        pi[first], pi[rng.choice(others)] = 1 - e, e
    elif u < 0.92:
        w = rng.beta(2.0, 2.0)
        pi[first], pi[rng.choice(others)] = w, 1 - w
    else:
        pi[rng.choice(PROBE_CLASSES, 3, replace=False)] = rng.dirichlet([2, 2, 2])
    if rng.random() < 0.06:
        e = rng.beta(1.5, 15.0)
        pi *= 1 - e
        pi[rng.choice([UPOS_IDS["INTJ"], UPOS_IDS["SYM"]])] += e
    return pi


def draw_probe(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    while True:
        logits = np.full(K, -np.inf)
        tau = rng.uniform(0.4, 1.6)
        logits[PROBE_CLASSES] = tau * np.log(pi[PROBE_CLASSES] + 0.03) + rng.normal(0, 1.0, len(PROBE_CLASSES))
        q = np.exp(logits - logits[PROBE_CLASSES].max())
        q /= q.sum()
        if q.max() < 0.95:
            return q


@dataclass
class Study:
    truth: np.ndarray  # [N, K] each candidate's true distribution
    probe: np.ndarray  # [N, K] (zero outside PROBE_CLASSES)
    labels: np.ndarray  # [N, num_samples] UPOS ids the tagger gave
    confusion: np.ndarray  # [K, K] the true confusion
    measured: np.ndarray  # [K, K] counts of a treebank measurement of it


def draw_study(
    n: int,
    rng: np.random.Generator,
    num_samples: int = 96,
    calibrated: bool = False,
    truth: np.ndarray | None = None,
    probe: np.ndarray | None = None,
    confusion: np.ndarray | None = None,
) -> Study:
    """A study of n candidates; `calibrated`: the probe is the truth. Any part can be given."""
    C = tagger_confusion() if confusion is None else confusion
    if truth is None:
        truth = np.stack([draw_truth(rng) for _ in range(n)])
    if probe is None:
        probe = truth.copy() if calibrated else np.stack([draw_probe(pi, rng) for pi in truth])
    mixed = truth @ C
    labels = np.stack([rng.choice(K, size=num_samples, p=row / row.sum()) for row in mixed])
    return Study(truth, probe, labels, C, treebank_counts(C, rng))


WORD_ERROR = 0.08  # a hard word's extra error on its class, moved to the class's main confusion
WORDS_PER_KIND = 4  # candidate word types per class: this many that err as the class does, this many harder


@dataclass
class WordStudy:
    """A study whose tagger errs by word: each candidate's word has its own confusion C_w."""

    truth: np.ndarray  # [N, K]
    probe: np.ndarray  # [N, K]
    counts: np.ndarray  # [N, K] label counts, drawn through each candidate's word's C_w
    words: list[str]  # [N] each candidate's word
    measured: object  # a Confusion: the treebank's counts, with its per-word counts (by_word)
    hard: np.ndarray  # [N] bool: the candidate's word is one of the harder ones
    confusions: np.ndarray  # [N, K, K] each candidate's word's C_w (labels of other truths: pi' C_w)


def draw_word_study(n: int, rng: np.random.Generator, num_samples: int = 96) -> WordStudy:
    """Word-specific tagger error with a measurement that can see it. Per probe class t: WORDS_PER_KIND
    word types that err as the class row does, and as many harder ones (WORD_ERROR of their words of
    class t tagged as t's main confusion instead), each measured on 50-400 held-out words of class t;
    the rest of the class's treebank words (ROW_WORDS) are other word types that err as the row, of
    1-30 words each. A candidate's word is one of its first reading's class's 2 x WORDS_PER_KIND,
    at random; its labels are Multinomial(num_samples, pi C_w), C_w the class row C but for that
    word's own row. The truth is tests' population (draw_truth), unchanged."""
    from posresample.stats.confusion import Confusion

    C = tagger_confusion()
    word_rows: dict[str, tuple[int, np.ndarray]] = {}
    by_word: dict[str, np.ndarray] = {}
    for name, row_words in ROW_WORDS.items():
        t = UPOS_IDS[name]
        other = UPOS_IDS[CONFUSED_WITH[name][0]]
        for kind in ("plain", "hard"):
            for j in range(WORDS_PER_KIND):
                row = C[t].copy()
                if kind == "hard":
                    moved = min(WORD_ERROR, row[t])
                    row[t] -= moved
                    row[other] += moved
                word = f"{name.lower()}-{kind}-{j}"
                word_rows[word] = (t, row)
                counts = np.zeros((K, K))
                counts[t] = rng.multinomial(int(rng.integers(50, 401)), row)
                by_word[word] = counts
        left, j = row_words, 0
        while left > 0:
            size = min(left, int(rng.integers(1, 31)))
            counts = np.zeros((K, K))
            counts[t] = rng.multinomial(size, C[t])
            by_word[f"{name.lower()}-other-{j}"] = counts
            left, j = left - size, j + 1
    measured = Confusion(sum(by_word.values()), "known truth: held-out words by word type", by_word=by_word)
    truth = np.stack([draw_truth(rng) for _ in range(n)])
    probe = np.stack([draw_probe(pi, rng) for pi in truth])
    words, counts, hard, confusions = [], [], [], []
    for pi in truth:
        name = UPOS_NAMES[int(pi.argmax())]
        word = f"{name.lower()}-{rng.choice(['plain', 'hard'])}-{rng.integers(WORDS_PER_KIND)}"
        t, row = word_rows[word]
        Cw = C.copy()
        Cw[t] = row
        mix = pi @ Cw
        counts.append(rng.multinomial(num_samples, mix / mix.sum()))
        words.append(word)
        hard.append("-hard-" in word)
        confusions.append(Cw)
    return WordStudy(
        truth, probe, np.stack(counts).astype(float), words, measured, np.array(hard), np.stack(confusions)
    )


def labels_through(truth: np.ndarray, confusions: np.ndarray, rng: np.random.Generator, num_samples: int = 96):
    """[N, K] label counts: num_samples labels of each candidate from pi C, its own C ([N, K, K], as a
    WordStudy's `confusions`, or one matrix broadcast): another truth of the same candidates' words."""
    mixed = np.einsum("nk,nkj->nj", truth, np.broadcast_to(confusions, (len(truth), K, K)))
    return np.stack([rng.multinomial(num_samples, row / row.sum()) for row in mixed]).astype(float)


def as_study(words: WordStudy, rng: np.random.Generator) -> Study:
    """A word study as `write_study` takes it: each candidate's labels one per completion, in random order."""
    labels = np.stack([rng.permutation(np.repeat(np.arange(K), row.astype(int))) for row in words.counts])
    return Study(words.truth, words.probe, labels, tagger_confusion(), words.measured.counts)


def label_counts(study: Study) -> np.ndarray:
    """[N, K] each candidate's labels counted by UPOS id, as `analyze` counts them from the database."""
    return np.stack([np.bincount(row, minlength=K) for row in study.labels]).astype(float)


def population_truth(rng: np.random.Generator, n: int = 200_000) -> dict:
    """The population's values of the statistics the coverage bench checks (a large Monte Carlo draw)."""
    truth = np.stack([draw_truth(rng) for _ in range(n)])
    return truth_values(truth, np.stack([draw_probe(pi, rng) for pi in truth]))


def truth_values(truth: np.ndarray, probe: np.ndarray) -> dict:
    ordered = np.sort(truth, axis=1)
    ambiguous = ordered[:, -2] >= 0.10
    dominant = (ordered[:, -1] >= 0.90) & ~ambiguous
    agrees = truth.argmax(1) == probe.argmax(1)
    return {
        "tv": float(0.5 * np.abs(truth - probe).sum(1).mean()),
        "genuinely_ambiguous": float(ambiguous.mean()),
        "probe_underconfident": float((dominant & agrees).mean()),
        "probe_wrong": float((dominant & ~agrees).mean()),
        "undetermined": float((~ambiguous & ~dominant).mean()),
        "majority_is_probe_argmax": float(agrees.mean()),
    }


def planted_verdicts(truth: np.ndarray, probe: np.ndarray) -> list[str]:
    ordered = np.sort(truth, axis=1)
    out = []
    for row, pi, q in zip(ordered, truth, probe):
        if row[-2] >= 0.10:
            out.append("genuinely_ambiguous")
        elif row[-1] >= 0.90:
            out.append("probe_underconfident" if pi.argmax() == q.argmax() else "probe_wrong")
        else:
            out.append("undetermined")
    return out


def write_study(
    engine,
    study: Study,
    tagger_counts: np.ndarray | None,
    name: str = "known",
    texts: bool = True,
    sampled: int | None = None,
    words: list[str] | None = None,
) -> None:
    """The study as a database, through the project's own statements: a scan and its candidates
    (store), each job claimed and completed (queue), the tagger registered with its measured
    confusion and every completion labelled (label_store). Completions are ~70-character texts.
    `sampled`: only the first this many jobs of the queue's (random) order are sampled, as a
    worker under --max-jobs leaves a study. `tagger_counts`: the stored confusion's counts, or a
    Confusion (with its per-word counts); `words`: each candidate's word in its original sentence."""
    from posresample import scan_store
    from posresample.config import GenerationParams

    n, num_samples = study.labels.shape
    params = GenerationParams(model="/nonexistent/synthetic-model", num_samples=num_samples, max_new_tokens=16)
    identity, extra = _scan_identity(n)
    scan, pid = scan_store.open_scan(engine, name, identity, extra, params, owner="known-truth", lease_seconds=600)
    rows = []
    for i, (pi, q) in enumerate(zip(study.truth, study.probe)):
        pred = int(q.argmax())
        rows.append(
            dict(
                dataset_idx=i,
                sent_id=f"known-{i}",
                sentence_text=f"the sentence of candidate {i} goes on here .",
                target_position=4,
                target_token_id=7,
                target_token=" of",
                prefix_text="the sentence of",
                prefix_token_ids=[2, 5, 6, 7],
                true_label=int(pi.argmax()),
                true_label_name=UPOS_NAMES[int(pi.argmax())],
                probe_probs=[float(x) for x in q[PROBE_CLASSES]],
                probe_pred=pred,
                probe_pred_name=UPOS_NAMES[pred],
                probe_max_prob=float(q.max()),
            )
        )
    for start in range(0, n, 1000):
        scan_store.save_scan_batch(
            engine, scan["id"], pid, rows[start : start + 1000], min(start + 1000, n), 0, 0, owner="known-truth"
        )
    scan_store.finish_scan(engine, scan["id"])
    scan_store.release_scan_lease(engine, scan["id"], "known-truth")
    _sample(engine, n if sampled is None else sampled, num_samples, texts)
    write_tagger(engine, scan["id"], study.labels, study.truth, tagger_counts, name, sampled, words)


def _scan_identity(n: int) -> tuple[dict, dict]:
    from tests.helpers import fake_scan_identity

    identity = fake_scan_identity(
        dataset="synthetic",
        model="synthetic",
        layer=12,
        excluded_labels=[UPOS_IDS["_"], UPOS_IDS["SYM"], UPOS_IDS["INTJ"]],
    )
    return identity, dict(probe_path="probe.joblib", probe_classes=PROBE_CLASSES, sentences_total=n)


def _sample(engine, jobs: int, num_samples: int, texts: bool = True, worker: str = "known:1:truth") -> None:
    """The first `jobs` of the queue's order claimed and completed by one worker, as workers would."""
    from posresample import queue

    text = "{i} the model goes on with the sentence and then it stops somewhere near here" if texts else "c{i}"
    queue.register_worker(engine, worker, "cpu", 600)
    left = jobs
    while left > 0 and (claimed := queue.claim_jobs(engine, worker, min(256, left), 600, 3)):
        left -= len(claimed)
        for job in claimed:
            queue.complete_job(
                engine,
                job,
                worker,
                [
                    dict(
                        sample_index=s,
                        text=text.format(i=s),
                        token_ids=[5 + s % 7] * 16,
                        num_tokens=16,
                        finish_reason="length",
                    )
                    for s in range(num_samples)
                ],
            )


def write_resampled(engine, labels: np.ndarray, sampled: int, temperature: float = 1.0, top_p: float = 1.0) -> int:
    """The study's scan sampled again under other generation params (the first `sampled` candidates
    of its queue order, as `scan --temperature ... --top-p ...` then `worker --max-jobs` do), and
    labelled by the study's tagger from `labels` [N, num_samples] (the candidates' labels under
    those params, by candidate). -> the new params id."""
    from posresample import label_store, scan_store
    from posresample.config import GenerationParams

    n, num_samples = labels.shape
    params = GenerationParams(
        model="/nonexistent/synthetic-model",
        num_samples=num_samples,
        max_new_tokens=16,
        temperature=temperature,
        top_p=top_p,
    )
    identity, extra = _scan_identity(n)
    scan, pid = scan_store.open_scan(engine, "known", identity, extra, params, owner="known-truth", lease_seconds=600)
    scan_store.release_scan_lease(engine, scan["id"], "known-truth")
    _sample(engine, sampled, num_samples, worker="known:2:again")
    tagger_id = label_store.register_tagger(
        engine, {"name": "known", "spec": "known:", "library": "synthetic", "library_version": "0"}
    )
    while jobs := label_store.claim_label_jobs(engine, tagger_id, "known:2:label", 256, 600, scan["id"]):
        rows = [
            dict(
                completion_id=completion_id,
                upos=int(labels[index, sample]),
                upos_name=UPOS_NAMES[int(labels[index, sample])],
                tag=None,
                word="of",
                status="ok",
            )
            for completion_id, index, sample in _completions(engine, jobs, {})
        ]
        label_store.write_labels(engine, tagger_id, "known:2:label", jobs, rows)
    return pid


def write_tagger(
    engine,
    scan_id: int,
    labels: np.ndarray,
    truth: np.ndarray,
    tagger_counts,
    name: str = "known",
    sampled: int | None = None,
    words: list[str] | None = None,
) -> None:
    """A tagger's labels of the study's completions (`labels` [N, num_samples] UPOS ids), written
    through the label stage's own queue, with `tagger_counts` as its stored confusion, and its
    labels of the original sentences (the truth's first class)."""
    from posresample import label_store
    from posresample.stats.confusion import Confusion

    if tagger_counts is None:
        confusion = None
    elif isinstance(tagger_counts, Confusion):
        confusion = tagger_counts.to_json()
    else:
        confusion = Confusion(tagger_counts, "known truth: a treebank-sized sample").to_json()
    tagger_id = label_store.register_tagger(
        engine,
        {"name": name, "spec": f"{name}:", "library": "synthetic", "library_version": "0", "confusion": confusion},
    )
    job_of = _jobs_by_candidate(engine, scan_id)
    while jobs := label_store.claim_label_jobs(engine, tagger_id, f"{name}:2:label", 256, 600, scan_id):
        label_rows = []
        for completion_id, candidate_index, sample in _completions(engine, jobs, job_of):
            upos = int(labels[candidate_index, sample])
            label_rows.append(
                dict(
                    completion_id=completion_id, upos=upos, upos_name=UPOS_NAMES[upos], tag=None, word="of", status="ok"
                )
            )
        label_store.write_labels(engine, tagger_id, f"{name}:2:label", jobs, label_rows)
    originals = [
        dict(
            candidate_id=cid,
            upos=int(truth[i].argmax()),
            upos_name=UPOS_NAMES[int(truth[i].argmax())],
            tag=None,
            word="of" if words is None else words[i],
            status="ok",
        )
        for i, cid in enumerate(sorted(job_of))
        if sampled is None or _is_done(engine, job_of[cid])
    ]
    label_store.write_candidate_labels(engine, tagger_id, originals)


def _is_done(engine, job_id: int) -> bool:
    from sqlalchemy import select

    from posresample import db
    from posresample.schema import jobs

    with db.read(engine) as conn:
        return conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one() == "done"


def _jobs_by_candidate(engine, scan_id: int) -> dict[int, int]:
    from sqlalchemy import select

    from posresample import db
    from posresample.schema import candidates, jobs

    with db.read(engine) as conn:
        return dict(
            conn.execute(
                select(candidates.c.id, jobs.c.id)
                .join(jobs, jobs.c.candidate_id == candidates.c.id)
                .where(candidates.c.scan_id == scan_id)
            ).all()
        )


def _completions(engine, job_ids: list[int], job_of: dict[int, int]):
    """(completion id, candidate index in the study, sample index) for the jobs' completions."""
    from sqlalchemy import select

    from posresample import db
    from posresample.schema import candidates, completions, jobs

    with db.read(engine) as conn:
        rows = conn.execute(
            select(completions.c.id, candidates.c.dataset_idx, completions.c.sample_index)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(completions.c.job_id.in_(job_ids))
        ).all()
    return rows
