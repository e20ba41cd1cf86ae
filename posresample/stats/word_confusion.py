"""The tagger's confusion per word type, pooled toward its class's row where the word is rare.

The treebank average C says how often the tagger errs on a true NOUN or ADP; a given word ("that",
"as", "like") may err far more or less often than its class. Measured on held-out words (the same
ones as C, `Confusion.by_word`), each word type w has counts n_wt for its true class t: how the
tagger tagged those words. Few words of a type make a noisy row; many make a sure one. The
hierarchical model: a word's row is C_w[t] ~ Dirichlet(alpha_t) = Dirichlet(m_t mu_t), a mean row
mu_t and m_t pseudo-words of concentration, and n_wt ~ Multinomial(C_w[t]). Then

- alpha_t is estimated by maximum marginal likelihood, the Dirichlet-multinomial over the class's
  word types (Minka 2000, "Estimating a Dirichlet distribution"), where MIN_WORD_TYPES types with two
  or more words of the class inform the spread (one word says nothing of how words differ). The mean
  mu_t is then the average word type's row, not the average word's: the class row C[t] is dominated
  by a few frequent words, and a rare word is better predicted by words in general. A class with
  fewer such types keeps C[t] as its mean, with one m pooled over those classes (the same marginal
  likelihood). A class whose words all err alike gets a large m (its words follow the mean); one
  whose words differ, a small one (a word's own counts decide).
- a word's posterior row is Dirichlet(n_wt + alpha_t): its counts shrunk toward the mean, with their
  uncertainty. A word never measured gets the prior, Dirichlet(alpha_t): the mean, and how far any
  one word may be from it.

This is parametric empirical Bayes for multinomial rows (a Dirichlet-multinomial hierarchy), the
standard pooling of many small rows toward their mean. What it cannot see is error that depends on
the context rather than the word (the same "that" harder in the sentences where the probe is
unsure): the hard-word row of the sensitivity table measures that on the candidates' own sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import UPOS_NAMES, K
from .confusion import Confusion, PerCandidate, word_key

MIN_WORD_TYPES = 10  # word types (of 2+ words of a class) for a class's own strength; else the pooled one
STRENGTH_BOUNDS = (1.0, 1e6)  # pseudo-words a row: from barely pooled to the class row itself


@dataclass(frozen=True)
class WordConfusions:
    base: Confusion  # the class-level confusion (all words), with its per-word counts
    alpha: np.ndarray  # [K, K] the prior's pseudo-words per row (0 where the class has no row)
    own_strength: tuple[int, ...]  # the classes fitted on their own word types (the others: pooled)

    @property
    def strength(self) -> np.ndarray:
        """[K] m_t, the pseudo-words of each row."""
        return self.alpha.sum(axis=1)

    @classmethod
    def fit(cls, base: Confusion) -> WordConfusions | None:
        """alpha_t by maximum marginal likelihood over `base.by_word`'s word types; None where fewer
        than MIN_WORD_TYPES types of two or more words inform it in all (a handful of held-out words
        cannot say how words differ: the class rows are then all there is)."""
        if not base.by_word:
            raise ValueError("the confusion has no per-word counts to fit")
        C = base.matrix()
        rows: list[list[np.ndarray]] = [[] for _ in range(K)]
        for counts in base.by_word.values():
            for t in np.flatnonzero(counts.sum(axis=1) >= 1):
                if base.support[t] and t not in base.filled:
                    rows[t].append(counts[t])
        stacked = {t: np.stack(r) for t, r in enumerate(rows) if r}
        if sum(int((r.sum(axis=1) >= 2).sum()) for r in stacked.values()) < MIN_WORD_TYPES:
            return None
        informed = [t for t, r in stacked.items() if (r.sum(axis=1) >= 2).sum() >= MIN_WORD_TYPES]
        rest = [(t, r) for t, r in stacked.items() if t not in informed]
        pooled = _max_marginal(rest, C) if rest else STRENGTH_BOUNDS[1]
        alpha = C * np.where(base.support, pooled, 0.0)[:, None]
        for t in informed:
            alpha[t] = _dirichlet_multinomial_fit(stacked[t], C[t])
        return cls(base, alpha, tuple(informed))

    def for_word(self, word: str | None) -> Confusion:
        """The word's confusion: its own counts (none if not measured) plus the prior's alpha_t
        pseudo-words (the mean of its class's word types, m_t of them)."""
        key = word_key(word)
        counts = self.base.by_word.get(key) if key else None
        if counts is not None:  # rows the class-level counts lack (a hand-made file) carry no prior: left out
            counts = np.where(self.base.counts.sum(axis=1, keepdims=True) > 0, counts, 0.0)
        own = Confusion(
            np.zeros((K, K)) if counts is None else counts,
            f"word {key!r}" if counts is not None else "a word not measured",
            filled=self.base.filled,
        )
        pseudo = self.alpha.copy()
        pseudo[~self.base.support] = 0
        return Confusion(
            own.counts + pseudo,
            f"{own.source}, shrunk toward the word types of {self.base.source}",
            filled=self.base.filled,
            pseudo=pseudo,
            smoothing=0.0,  # alpha is the prior, and positive wherever the class has a row
        )

    def for_candidates(self, words: list[str | None]) -> PerCandidate:
        """Each candidate's word's confusion: one member per distinct measured word, one for every
        word not measured (the class rows with the spread between words)."""
        keys = [word_key(w) for w in words]
        keys = [k if k in self.base.by_word else None for k in keys]
        distinct = sorted({k for k in keys if k is not None})
        index = {k: i + 1 for i, k in enumerate(distinct)}
        members = (self.for_word(None), *(self.for_word(k) for k in distinct))
        group = np.array([index.get(k, 0) if k is not None else 0 for k in keys], dtype=np.int64)
        source = (
            f"per word type: {len(distinct)} of the candidates' words measured on {self.base.source}, each "
            f"shrunk toward its class's row (pseudo-words by marginal likelihood); {int((group == 0).sum())} "
            "candidates' words not measured take the class rows"
        )
        return PerCandidate(members, group, source)

    def describe(self, words: list[str | None], top: int = 15) -> dict:
        """For the page and summary.json: the strengths, and the candidates' most frequent words with
        their held-out counts and the tagger's accuracy on them, raw and shrunk."""
        keys = [word_key(w) for w in words]
        freq: dict[str, int] = {}
        for k in keys:
            if k:
                freq[k] = freq.get(k, 0) + 1
        class_rows = self.base.matrix()
        out = []
        for word, n in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
            counts = self.base.by_word.get(word)
            if counts is None:
                out.append({"word": word, "candidates": n, "held_out_words": 0})
                continue
            classes = counts.sum(axis=1)
            shrunk = self.for_word(word).matrix()
            out.append(
                {
                    "word": word,
                    "candidates": n,
                    "held_out_words": int(classes.sum()),
                    "accuracy": float(np.trace(counts) / classes.sum()),
                    "shrunk_accuracy": float((classes * np.diag(shrunk)).sum() / classes.sum()),
                    "class_rows_accuracy": float((classes * np.diag(class_rows)).sum() / classes.sum()),
                    "classes": {UPOS_NAMES[t]: int(c) for t, c in enumerate(classes) if c},
                }
            )
        measured = sum(1 for k in keys if k and k in self.base.by_word)
        return {
            "method": "Dirichlet-multinomial empirical Bayes: each word's rows shrunk toward its class's row",
            "strength": {UPOS_NAMES[t]: float(self.strength[t]) for t in np.flatnonzero(self.strength)},
            "own_strength": [UPOS_NAMES[t] for t in self.own_strength],
            "word_types_measured": len(self.base.by_word),
            "candidates_with_measured_word": measured,
            "candidates": len(keys),
            "words": out,
        }


def _dirichlet_multinomial_fit(n: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The Dirichlet-multinomial's maximum-likelihood alpha [K] for word types' counts n [W, K]
    (L-BFGS on log alpha with the exact gradient), from `start` (the class row) x 100 words."""
    from scipy.optimize import minimize
    from scipy.special import digamma, gammaln

    N = n.sum(axis=1)
    lo, hi = np.log(1e-4), np.log(STRENGTH_BOUNDS[1])

    def negative(log_alpha: np.ndarray) -> tuple[float, np.ndarray]:
        a = np.exp(log_alpha)
        A = a.sum()
        value = (gammaln(A) - gammaln(A + N)).sum() + (gammaln(a + n) - gammaln(a)).sum()
        grad = (digamma(A) - digamma(A + N)).sum() + (digamma(a + n) - digamma(a)).sum(axis=0)
        return -value, -grad * a

    x0 = np.clip(np.log(np.maximum(start, 1e-9) * 100.0), lo, hi)
    found = minimize(negative, x0, jac=True, method="L-BFGS-B", bounds=[(lo, hi)] * len(x0))
    return np.exp(found.x)


def _max_marginal(rows: list[tuple[int, np.ndarray]], C: np.ndarray) -> float:
    """argmax_m of sum over word types of log DirMult(n | m C[t]), over STRENGTH_BOUNDS (the
    multinomial coefficients do not depend on m)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import gammaln

    def negative(log_m: float) -> float:
        m = np.exp(log_m)
        total = 0.0
        for t, n in rows:  # n [W, K] counts of words of class t
            a = m * C[t]
            total += (gammaln(m) - gammaln(m + n.sum(axis=1))).sum() + (gammaln(a + n) - gammaln(a)).sum()
        return -total

    lo, hi = np.log(STRENGTH_BOUNDS[0]), np.log(STRENGTH_BOUNDS[1])
    found = minimize_scalar(negative, bounds=(lo, hi), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(found.x))
