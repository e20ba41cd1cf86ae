"""The corrected view: what the candidates' labels say once the tagger's confusion and the sampling
noise are modelled. Per candidate (verdict.py): the corrected distribution with its intervals, a
test of the probe, a verdict. For the study (population.py): shares and means that estimate the
population's values, not the plug-ins', with intervals from a two-stage bootstrap.

The two-stage bootstrap resamples candidates, then draws each resampled candidate's distribution
from its posterior under the estimated population G, and takes the statistic: the spread of the
result carries both the sampling of candidates and what each candidate's 96 labels leave unknown.
A share's interval is widened, where that is wider, to the Jeffreys interval of the same share of
N candidates (a small share is where a percentile bootstrap is known to be short).

The two-stage bootstrap keeps the one fitted G; what it leaves out is how G itself would come out
of another sample of labels. On known-truth studies of 2,400 candidates that part made the
estimates vary 1.2-1.3x as much between studies as the two-stage said (docs/benchmarks.md), and a
nonparametric bootstrap that fits G again does not show it. `Refits` is the remedy: a parametric
bootstrap of R = REFITS replicate studies drawn from the fitted model (candidates resampled, each
one's distribution drawn from its posterior, its labels drawn again through the tagger's
confusion, the treebank measurement of that confusion drawn again), each analysed by the same
deconvolution; each interval is then widened, where that is wider, to the estimate +- t(R-1) x
their standard deviation (a t interval: exact for a normal estimate whatever R, wider on average
the smaller R is). Each refit is a whole deconvolution (~1.7 CPU-seconds at 4,000 candidates), so
they run on threads, beside the per-candidate work and the caller's raw view (`meanwhile`).
Measured coverage and cost: docs/benchmarks.md (bench/verdict_coverage.py, bench/analyze_speed.py).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_REFITS
from ..data import UPOS_NAMES, K
from . import deconvolution, metrics, verdict
from .confusion import Confusion, PerCandidate, rows_of

BOOTSTRAP = 1000  # two-stage replicates
REFITS = DEFAULT_REFITS  # parametric-bootstrap refits (replicate studies, each a whole deconvolution)
MAX_THREADS = 4  # refits at once, at most
# each refit holds its own likelihoods and posteriors while it runs, about this much a candidate
# (0.4 GB at 16,000); refits run at once only as far as REFIT_MEMORY allows, so that analyze stays
# under 1 GiB at 16,000 candidates (one at a time there; two at 4,000 on two cores)
REFIT_BYTES_PER_CANDIDATE = 26_000
REFIT_MEMORY = 512 * 2**20
CURVE_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # probe max probability bins of the study's curve
FDR = 0.05


@dataclass
class Corrected:
    point: np.ndarray  # [N, K] maximum-likelihood distribution behind the labels
    lo: np.ndarray  # [N, K] 95% interval per class
    hi: np.ndarray
    below: np.ndarray  # [N, 2] P(second label < 0.10), P(first label < 0.90): what the verdict turns on
    verdict: np.ndarray  # [N] index into verdict.VERDICTS
    p_value: np.ndarray  # [N]
    q_value: np.ndarray  # [N] Benjamini-Hochberg
    replicates: np.ndarray  # [N] Monte Carlo replicates behind each p-value
    posterior_mean: np.ndarray  # [N, K] E[pi | labels] under the estimated population
    summary: dict
    meanwhile: Any = None  # what estimate's `meanwhile` gave back


def estimate(
    counts: np.ndarray,
    q: np.ndarray,
    probe_classes: list[int],
    confusion: Confusion | PerCandidate,
    seed: int,
    refits: int | None = None,
    meanwhile: Callable[[], Any] | None = None,
    progress: bool = False,
) -> Corrected:
    """counts [N, K] the ok labels per candidate; q [N, K] the probe on all UPOS ids. refits: the
    parametric bootstrap's replicate studies [default: REFITS], run on threads while the
    per-candidate intervals and tests are computed, and then `meanwhile` (the caller's other
    work, its result kept as .meanwhile); progress: a bar of the replicate studies done."""
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the products here are many and small, and BLAS's own threads beside the
    # refits' slow them down (docs/design.md)
    with threadpool_limits(limits=1, user_api="blas"):
        return _estimate(
            counts, q, probe_classes, confusion, seed, REFITS if refits is None else refits, meanwhile, progress
        )


def _estimate(counts, q, probe_classes, confusion, seed: int, refits: int, meanwhile, progress: bool) -> Corrected:
    rng = np.random.default_rng(seed)
    C, support = confusion.matrix(), confusion.support
    point = verdict.mle(counts, C, support)
    g = deconvolution.deconvolve(counts, q, C, support, point, rng)
    trim_memory()
    boot = TwoStage(g.posterior, rng)
    values = atom_values(g, q, probe_classes)
    ambiguous = values["genuinely_ambiguous"]  # the curve's, per atom
    values = {name: boot.reduce(v) for name, v in values.items()}  # [N, KEEP] x 16: 130 MB at 16k, not kept
    posterior_mean = np.concatenate(
        [np.einsum("na,nak->nk", g.posterior[i : i + 1024], g.atom_block(i, i + 1024)) for i in range(0, len(q), 1024)]
    )  # [N, K] E[pi | labels]
    with Refits(counts, q, probe_classes, confusion, g, boot, refits, rng, progress) as pending:
        post = verdict.posterior(counts, confusion, point, rng)
        probe_pred = q.argmax(axis=1)
        calls = verdict.verdicts(point, post.below, probe_pred)
        test = verdict.probe_test(counts, q, confusion, rng, fdr=FDR)
        if pending.deferred:  # memory limits the refits: theirs first, then the caller's work (the examples)
            replicas = pending.result()
        side = meanwhile() if meanwhile is not None else None
        replicas = pending.result()
    summary = {
        "confusion": {
            "source": confusion.source,
            "exact": confusion.exact,
            "support": [UPOS_NAMES[k] for k in np.flatnonzero(support)],
        },
        "verdict": {name: boot.share(values[name], replicas[name]) for name in verdict.VERDICTS},
        "verdict_called": {name: int((calls == i).sum()) for i, name in enumerate(verdict.VERDICTS)},
        "verdict_refined": post.refined,
        "majority_is_probe_argmax": boot.share(
            values["majority_is_probe_argmax"], replicas["majority_is_probe_argmax"]
        ),
        "probe_contradicted_fdr05": metrics.jeffreys_interval(float((test.q <= FDR).sum()), len(counts)),
        "p_value_floor": float(1 / (1 + test.replicates.max())),
        "divergences": {
            name: boot.mean(values[name], replicas[name]) for name in ("tv", "js", "kl", "kl_all", "brier")
        },
        "out_of_probe_mass": boot.mean(values["out_of_probe"], replicas["out_of_probe"]),
        # the estimand varied: the share with a second reading of at least t, and the second reading's mean mass
        "ambiguous_by_threshold": [
            {"threshold": t, **boot.share(values[threshold_name(t)], replicas[threshold_name(t)])} for t in THRESHOLDS
        ],
        "second_reading_mass": boot.mean(values["second_mass"], replicas["second_mass"]),
        # a population quantity, unlike the count of rejections below: P(TV(pi, probe) > FAR_TV)
        "probe_far_from_words": {
            "tv_above": FAR_TV,
            **boot.share(values[f"tv_above_{FAR_TV}"], replicas[f"tv_above_{FAR_TV}"]),
        },
        # cross-entropy is linear in pi, so fitting to the posterior means fits to the posteriors
        "fitted_temperature": metrics.fit_temperature(posterior_mean, q),
        "curve": curve(g.posterior, ambiguous, q.max(axis=1), rng, replicas["curve"]),
        "population": {
            "atoms": int((g.weights > 1e-9).sum()),
            "method": "NPMLE over rank-frame atoms",
            "refits": refits,
        },
    }
    return Corrected(
        point, post.lo, post.hi, post.below, calls, test.p, test.q, test.replicates, posterior_mean, summary, side
    )


def atom_values(
    g: deconvolution.Deconvolution,
    q: np.ndarray,
    probe_classes: list[int],
    posterior: bool = False,
    names: tuple[str, ...] | None = None,
    block: int = 1024,
) -> dict[str, np.ndarray]:
    """Each statistic's value at each candidate's posterior atoms: {name: [N, KEEP]}; `posterior`:
    each candidate's posterior mean of it instead: {name: [N]}. A block of candidates at a time,
    written into arrays made once (the atoms are [N, KEEP, K], and each divergence's temporaries as
    large: 0.5 GB more at 16k at once). names: these statistics only."""
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(q), block):
        part = _atom_values(g.atom_block(i, i + block), q[i : i + block], probe_classes)
        for name, value in part.items():
            if names is not None and name not in names:
                continue
            if posterior:
                value = (g.posterior[i : i + block] * value).sum(axis=1)
            if name not in out:
                out[name] = np.empty((len(q), *value.shape[1:]))
            out[name][i : i + block] = value
    return out


def _atom_values(atoms: np.ndarray, q: np.ndarray, probe_classes: list[int]) -> dict[str, np.ndarray]:
    qa = q[:, None, :]
    ordered = np.sort(atoms, axis=-1)
    first, second = ordered[..., -1], ordered[..., -2]
    ambiguous = second >= verdict.AMBIGUOUS_SECOND
    dominant = (first >= verdict.DOMINANT_FIRST) & ~ambiguous
    agrees = atoms.argmax(axis=-1) == q.argmax(axis=1)[:, None]
    outside = np.setdiff1d(np.arange(K), probe_classes)
    tv = metrics.total_variation(atoms, qa)
    return {
        **{threshold_name(t): (second >= t).astype(float) for t in THRESHOLDS if t != verdict.AMBIGUOUS_SECOND},
        "second_mass": second,
        f"tv_above_{FAR_TV}": (tv > FAR_TV).astype(float),
        "genuinely_ambiguous": ambiguous.astype(float),
        "probe_underconfident": (dominant & agrees).astype(float),
        "probe_wrong": (dominant & ~agrees).astype(float),
        "undetermined": (~ambiguous & ~dominant).astype(float),
        "majority_is_probe_argmax": agrees.astype(float),
        "tv": tv,
        "js": metrics.js(atoms, qa),
        "kl": metrics.kl_on(atoms, qa, probe_classes),
        "kl_all": metrics.kl(atoms, qa),
        "brier": metrics.brier(qa, atoms),
        "out_of_probe": atoms[..., outside].sum(axis=-1),
    }


THRESHOLDS = (0.05, 0.10, 0.20, 0.30)  # second-reading thresholds of the ambiguous share's curve (0.10: the verdict's)
FAR_TV = 0.2  # the probe is far from the word's distribution when their total variation exceeds this


def threshold_name(t: float) -> str:
    return "genuinely_ambiguous" if t == verdict.AMBIGUOUS_SECOND else f"second_at_least_{t:.2f}"


SUMMARIES = (
    "genuinely_ambiguous",
    "probe_underconfident",
    "probe_wrong",
    "undetermined",
    "majority_is_probe_argmax",
    "tv",
    "js",
    "kl",
    "kl_all",
    "brier",
    "out_of_probe",
    "second_mass",
    f"tv_above_{FAR_TV}",
    *[threshold_name(t) for t in THRESHOLDS if t != verdict.AMBIGUOUS_SECOND],
)


def refit_estimates(
    counts: np.ndarray,
    q: np.ndarray,
    probe_classes: list[int],
    confusion: Confusion | PerCandidate,
    g: deconvolution.Deconvolution,
    boot: TwoStage,
    rng: np.random.Generator,
    refits: int | None = None,
) -> dict[str, np.ndarray]:
    """The parametric bootstrap: {statistic: [R] estimates}, "curve": [R, bins] (NaN where a bin is
    empty). Replicate r takes the two-stage bootstrap's r-th draw (candidates resampled, each one's
    distribution drawn from its posterior under G), draws each candidate's labels from it through
    the confusion and the treebank measurement of the confusion from that confusion, and runs the
    whole deconvolution again. The replicates run on threads (the sparse products and the
    likelihood's logs let go of the GIL), each with its own generator: the result does not depend
    on how they are scheduled."""
    with Refits(counts, q, probe_classes, confusion, g, boot, REFITS if refits is None else refits, rng) as pending:
        return pending.result()


class Refits:
    """The parametric bootstrap's replicates, started on a thread pool at entry: result() waits."""

    def __init__(
        self,
        counts,
        q,
        probe_classes,
        confusion,
        g,
        boot,
        refits: int,
        rng: np.random.Generator,
        progress: bool = False,
    ):
        if refits > len(boot.rows):
            raise ValueError(
                f"{refits} refits, but the two-stage bootstrap drew {len(boot.rows)} replicates to take them from"
            )
        self.args = (counts, q, probe_classes, confusion)
        # replicate r's candidates and their true distributions (two-stage draw r): [N] and [N, K] each
        self.draws = [
            (boot.rows[r], g.atoms_of(boot.rows[r], boot.atoms[r][:, None].astype(np.int64))[:, 0])
            for r in range(refits)
        ]
        self.refits, self.progress = refits, progress
        self.seeds = rng.integers(0, 2**63, size=refits)  # one generator a replicate, drawn up front

    def __enter__(self) -> Refits:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.refits,
            desc="analyze: replicate studies",
            unit="study",
            disable=not self.progress or not self.refits,
        )
        lock = threading.Lock()  # the bar is advanced from the pool's threads

        def done(future) -> None:
            if not future.cancelled():  # a cancelled one (an error elsewhere) is not a study done
                with lock:
                    self.bar.update(1)

        threads = refit_threads(self.refits, len(self.args[0]))
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self._done, self.futures = done, []
        # beside the rest of the analysis when there is memory for that; after it when memory is what
        # limits the refits (the analysis's own temporaries and a refit's would then be held at once)
        self.deferred = threads < min(self.refits, MAX_THREADS, os.cpu_count() or 1)
        if not self.deferred:
            self._start()
        return self

    def _start(self) -> None:
        self.futures = [
            self.pool.submit(_refit, *self.args, *self.draws[r], np.random.default_rng(int(seed)))
            for r, seed in enumerate(self.seeds)
        ]
        for future in self.futures:
            future.add_done_callback(self._done)

    def __exit__(self, *exc) -> None:
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=True)
        self.bar.close()

    def result(self) -> dict[str, np.ndarray]:
        """Waits for the replicate studies (started now, if deferred); can be called again."""
        if self.deferred and not self.futures:
            self._start()
        out = {name: np.empty(self.refits) for name in SUMMARIES}
        out["curve"] = np.full((self.refits, len(CURVE_EDGES) - 1), np.nan)
        for r, future in enumerate(self.futures):
            for name, value in future.result().items():
                out[name][r] = value
        return out


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere (looked up once: find_library runs ldconfig)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_memory() -> None:
    """Give the heap that freed temporaries leave behind back to the system (glibc keeps it, and the
    blocks of [n, atoms] temporaries, on several threads' arenas, fragment it, so the resident size
    stays far above what is live). As Dask's workers do; elsewhere a no-op."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class MemoryBudget:
    """REFIT_MEMORY shared by every deconvolution run on a thread (the refits and the sensitivity
    rows, which may run at once): one waits while the others hold too much of it; one alone always
    runs."""

    def __init__(self):
        self._cond = threading.Condition()
        self._used = 0

    @contextmanager
    def hold(self, candidates: int):
        need = candidates * REFIT_BYTES_PER_CANDIDATE
        with self._cond:
            while self._used and self._used + need > REFIT_MEMORY:
                self._cond.wait()
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()


DECONVOLUTIONS = MemoryBudget()


def refit_threads(refits: int, candidates: int) -> int:
    """Refits at once: as many as the cores, MAX_THREADS and REFIT_MEMORY allow, at least one
    (DECONVOLUTIONS holds every thread's deconvolution to REFIT_MEMORY in all)."""
    by_memory = REFIT_MEMORY // max(1, candidates * REFIT_BYTES_PER_CANDIDATE)
    return max(1, min(refits, MAX_THREADS, os.cpu_count() or 1, by_memory))


def _refit(counts, q, probe_classes, confusion, rows: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> dict:
    """One replicate study's estimates: {statistic: float, "curve": [bins]}; rows and truth [N, K]
    are its resampled candidates and their distributions."""
    mix = verdict.mixed(truth, rows_of(confusion, rows).matrix())
    labels = rng.multinomial(counts.sum(axis=1).astype(np.int64)[rows], mix / mix.sum(axis=1, keepdims=True)).astype(
        float
    )
    measured = rows_of(confusion.redrawn(rng), rows)
    qr = q[rows]
    with DECONVOLUTIONS.hold(len(labels)):
        means = posterior_means(labels, qr, probe_classes, measured.matrix(), measured.support, rng)
    out = {name: float(means[name].mean()) for name in SUMMARIES}
    bins = np.digitize(qr.max(axis=1), CURVE_EDGES[1:-1])
    out["curve"] = np.array(
        [
            means["genuinely_ambiguous"][bins == b].mean() if (bins == b).any() else np.nan
            for b in range(len(CURVE_EDGES) - 1)
        ]
    )
    del means, labels
    trim_memory()
    return out


def population_shares(
    counts: np.ndarray,
    q: np.ndarray,
    probe_classes: list[int],
    confusion: Confusion | PerCandidate,
    seed: int,
    replicates: int = 400,
) -> dict:
    """The study's verdict shares under another confusion, for the sensitivity table: the same
    deconvolution, two-stage intervals only (no refits: each row would cost R deconvolutions more)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    with threadpool_limits(limits=1, user_api="blas"), DECONVOLUTIONS.hold(len(counts)):
        g, values, boot = _shares_of(counts, q, probe_classes, confusion, rng, replicates, verdict.VERDICTS)
        return {name: boot.share(values[name]) for name in verdict.VERDICTS}


def _shares_of(counts, q, probe_classes, confusion, rng, replicates: int, names: tuple[str, ...], rows=None):
    """The deconvolution under `confusion`, the statistics `names` at its atoms, and their two-stage
    bootstrap (resampling `rows` where given): (Deconvolution, {name: [N, KEEP]}, TwoStage)."""
    C, support = confusion.matrix(), confusion.support
    g = deconvolution.deconvolve(counts, q, C, support, verdict.mle(counts, C, support), rng)
    values = atom_values(g, q, probe_classes, names=names)
    trim_memory()
    return g, values, TwoStage(g.posterior, rng, replicates=replicates, rows=rows)


COMPARED = (*verdict.VERDICTS, "second_mass")  # what compare_samplers compares


def compare_samplers(
    counts: np.ndarray,
    other: np.ndarray,
    q: np.ndarray,
    probe_classes: list[int],
    confusion: Confusion | PerCandidate,
    seed: int,
    replicates: int = 400,
    refits: int | None = None,
) -> dict:
    """The same candidates sampled under two generation params (`counts` and `other`, [N, K] each):
    each one's verdict shares and mean second-reading mass (the deconvolution of each), and the
    difference (this - other). Every interval is `estimate`'s: the two-stage bootstrap, paired for
    the difference (each replicate resamples the same candidates on both sides and draws each one's
    atom from its posterior under each, independently, as the two samplings' labels are), widened
    by `refits` replicate studies of each side (the parametric bootstrap; replicate r of both sides
    resamples the same candidates, so the difference's refits are paired too). Without the refits
    the difference's interval covered 82% on known truths (bench/compare_coverage.py). A share the
    two samplers agree on does not depend on the sampler's temperature and top-p."""
    from threadpoolctl import threadpool_limits

    refits = REFITS if refits is None else refits
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(q), size=(replicates, len(q)))
    sides = {"this": counts, "other": other}
    fitted, reduced, replicas = {}, {}, {}
    with threadpool_limits(limits=1, user_api="blas"):
        with DECONVOLUTIONS.hold(len(q)):
            for name, labels in sides.items():
                g, values, boot = _shares_of(labels, q, probe_classes, confusion, rng, replicates, COMPARED, rows)
                fitted[name] = g, boot
                reduced[name] = {v: boot.reduce(values[v]) for v in COMPARED}
                del values
        for name, labels in sides.items():  # the refits hold DECONVOLUTIONS themselves, a thread each
            with Refits(labels, q, probe_classes, confusion, *fitted[name], refits, rng) as pending:
                replicas[name] = pending.result()
    out: dict = {}
    for name, (_g, boot) in fitted.items():
        out[name] = {v: boot.share(reduced[name][v], replicas[name][v]) for v in verdict.VERDICTS}
        out[name]["second_mass"] = boot.mean(reduced[name]["second_mass"], replicas[name]["second_mass"])
    out["difference"] = {}
    for v in COMPARED:
        (this, this_reps), (that, that_reps) = reduced["this"][v], reduced["other"][v]
        estimate = this - that
        lo, hi = np.quantile(this_reps - that_reps, [0.025, 0.975])
        ci = [float(min(lo, estimate)), float(max(hi, estimate))]
        paired = replicas["this"][v] - replicas["other"][v] if refits else None
        out["difference"][v] = {"estimate": estimate, "ci95": widen(estimate, ci, paired)}
    return out


def posterior_means(
    counts: np.ndarray,
    q: np.ndarray,
    probe_classes: list[int],
    C: np.ndarray,
    support: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The deconvolution from scratch, as `estimate` runs it: {statistic: [N] each candidate's
    posterior mean under the fitted G}; a population estimate is their mean."""
    g = deconvolution.deconvolve(counts, q, C, support, verdict.mle(counts, C, support), rng)
    means = atom_values(g, q, probe_classes, posterior=True)
    return {name: means[name] for name in SUMMARIES}


def widen(estimate: float, ci: list[float], refits: np.ndarray | None) -> list[float]:
    """The interval, widened where that is wider to estimate +- t(R-1, 0.975) x the refits' sd."""
    refits = None if refits is None else refits[np.isfinite(refits)]
    if refits is None or len(refits) < 2:
        return ci
    from scipy.stats import t

    half = float(t.ppf(0.975, len(refits) - 1) * np.std(refits, ddof=1))
    return [min(ci[0], estimate - half), max(ci[1], estimate + half)]


class TwoStage:
    """Replicates: candidates resampled, each resampled candidate's atom drawn from its posterior."""

    def __init__(
        self,
        posterior: np.ndarray,
        rng: np.random.Generator,
        replicates: int = BOOTSTRAP,
        rows: np.ndarray | None = None,
    ):
        """`rows` [replicates, N]: the candidates each replicate resamples, where another TwoStage
        must resample the same ones (a paired comparison); drawn here otherwise."""
        self.posterior = posterior
        n, keep = posterior.shape
        # 6 bytes a draw (int32 row, int16 atom), made 100 replicates at a time: 16k candidates x 1,000
        # replicates hold 96 MB, not the 0.5 GB of float and int64 temporaries of one whole search
        self.rows = np.empty((replicates, n), dtype=np.int32 if n < 2**31 else np.int64)
        self.atoms = np.empty((replicates, n), dtype=np.int16 if keep < 2**15 else np.int64)
        # inverse-CDF draws from each row's posterior in one search: row r's cumulative sums shifted by r
        shifted = (np.cumsum(posterior, axis=1) / posterior.sum(axis=1, keepdims=True) + np.arange(n)[:, None]).ravel()
        for start in range(0, replicates, 100):
            size = min(100, replicates - start)
            picked = rng.integers(0, n, size=(size, n)) if rows is None else rows[start : start + size]
            found = np.searchsorted(shifted, (picked + rng.random(picked.shape)).ravel()).reshape(picked.shape)
            self.rows[start : start + size] = picked
            self.atoms[start : start + size] = np.clip(found - picked * keep, 0, keep - 1)

    def replicate_means(self, values: np.ndarray) -> np.ndarray:
        out = np.empty(len(self.rows))
        for start in range(0, len(self.rows), 100):  # [100, N] at a time, not [replicates, N] floats at once
            part = slice(start, start + 100)
            out[part] = values[self.rows[part], self.atoms[part]].mean(axis=1)
        return out

    def reduce(self, values: np.ndarray) -> tuple[float, np.ndarray]:
        """What mean() and share() need of a statistic's [N, KEEP] values: (estimate, replicate means)."""
        return float((self.posterior * values).sum(axis=1).mean()), self.replicate_means(values)

    def mean(self, values: np.ndarray | tuple[float, np.ndarray], refits: np.ndarray | None = None) -> dict:
        """The estimate and its interval: the two-stage percentiles, widened by the parametric
        bootstrap's refit estimates where given. values: [N, KEEP], or reduce()'s pair."""
        estimate, replicates = values if isinstance(values, tuple) else self.reduce(values)
        lo, hi = np.quantile(replicates, [0.025, 0.975])
        ci = widen(estimate, [float(min(lo, estimate)), float(max(hi, estimate))], refits)
        return {"estimate": estimate, "ci95": ci}

    def share(self, values: np.ndarray | tuple[float, np.ndarray], refits: np.ndarray | None = None) -> dict:
        out = self.mean(values, refits)
        n = len(self.posterior)
        jeffreys = metrics.jeffreys_interval(out["estimate"] * n, n)["ci95"]
        out["ci95"] = [max(0.0, min(out["ci95"][0], jeffreys[0])), min(1.0, max(out["ci95"][1], jeffreys[1]))]
        return {"share": out["estimate"], "ci95": out["ci95"]}


def curve(
    posterior: np.ndarray,
    ambiguous: np.ndarray,
    max_prob: np.ndarray,
    rng: np.random.Generator,
    refits: np.ndarray | None = None,
) -> list[dict]:
    """The share genuinely ambiguous by the probe's max probability: if the probe's uncertainty is the
    word's ambiguity, it falls as the probe gets surer. refits: [R, bins] the parametric bootstrap's."""
    out = []
    for b, (lo, hi) in enumerate(zip(CURVE_EDGES[:-1], CURVE_EDGES[1:])):
        inside = (max_prob >= lo) & (max_prob < hi)
        if inside.sum() < 2:
            continue
        share = TwoStage(posterior[inside], rng, replicates=400).share(
            ambiguous[inside], None if refits is None else refits[:, b]
        )
        out.append({"probe_max_prob": [lo, hi], "n": int(inside.sum()), **share})
    return out
