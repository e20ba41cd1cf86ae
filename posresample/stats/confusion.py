"""The tagger's confusion: counts of (true UPOS -> the tagger's UPOS) on held-out words.

The file format (also how the `taggers.confusion` column holds it) is one JSON object, true label
to the tagger's label to a count:

    {"NOUN": {"NOUN": 4012, "PROPN": 61, "ADJ": 40, "VERB": 31}, "VERB": {"VERB": 2401, ...}, ...}

optionally wrapped as {"source": "...", "counts": {...}}. A class with no row is one the tagger was
never seen on: the analysis gives it no mass (it cannot say how such words are tagged). Words the
tagger could not label (no span, not a UPOS tag) are not confusions and are left out, as `label`
leaves such completions out of the empirical counts.

For the correction each row becomes a distribution with a pseudo-count of 1/18 per cell (one word
per row in all, so nothing is impossible), and its uncertainty is the Dirichlet posterior of those
counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data import UPOS_IDS, UPOS_NAMES, K
from ..errors import ConfigError

PSEUDO_COUNT = 1.0 / K  # per cell: one pseudo-word per row


MAX_COUNT = 10**12  # a count beyond any treebank (and within float64's exact integers)


@dataclass(frozen=True)
class Confusion:
    counts: np.ndarray  # [K, K] float: rows true UPOS, columns the tagger's UPOS
    source: str  # what it was measured on
    exact: bool = False  # the identity, used as it is (no pseudo-counts): labels taken as the truth
    filled: tuple[int, ...] = ()  # rows not measured, taken as the identity (the tagger right on them)

    @property
    def support(self) -> np.ndarray:
        """[K] bool: the true classes the tagger was measured on, or filled (the only ones given mass)."""
        support = self.counts.sum(axis=1) > 0
        support[list(self.filled)] = True
        return support

    def matrix(self) -> np.ndarray:
        """[K, K] row-stochastic P(tagger says l | true t); rows outside the support, and filled
        rows, are the identity."""
        if self.exact:
            return np.eye(K)
        smoothed = self.counts + PSEUDO_COUNT
        out = smoothed / smoothed.sum(axis=1, keepdims=True)
        identity = ~self.support
        identity[list(self.filled)] = True
        out[identity] = np.eye(K)[identity]
        return out

    def draws(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n, K, K] matrices from the rows' Dirichlet posterior (the identity when exact)."""
        if self.exact:
            return np.broadcast_to(np.eye(K), (n, K, K)).copy()
        gamma = rng.gamma(np.broadcast_to(self.counts + PSEUDO_COUNT, (n, K, K)))
        out = gamma / gamma.sum(axis=2, keepdims=True)
        identity = ~self.support
        identity[list(self.filled)] = True
        out[:, identity] = np.eye(K)[identity]
        return out

    def covering(self, labels: np.ndarray) -> Confusion:
        """This confusion with a row for every label the tagger gave (`labels` [K] bool): rows it
        lacks are filled with the identity (their words taken as tagged right), listed in `filled`."""
        wanted = labels.copy()
        wanted[UPOS_IDS["_"]] = False  # not a word's tag: UD splits such tokens, so no treebank measures it
        missing = tuple(int(k) for k in np.flatnonzero(wanted & ~self.support))
        if self.exact or not missing:
            return self
        return Confusion(self.counts, self.source, filled=tuple(sorted(set(self.filled) | set(missing))))

    def redrawn(self, rng: np.random.Generator) -> Confusion:
        """The same measurement made again: each measured row's words drawn again from its row of
        `matrix()` (a parametric bootstrap of the treebank measurement); the identity stays."""
        if self.exact:
            return self
        C = self.matrix()
        totals = self.counts.sum(axis=1).round().astype(np.int64)
        counts = np.zeros_like(self.counts)
        measured = self.counts.sum(axis=1) > 0
        counts[measured] = rng.multinomial(totals[measured], C[measured])
        return Confusion(counts, self.source, filled=self.filled)

    def scaled_errors(self, factor: float) -> Confusion:
        """Each measured row's errors (off-diagonal counts) times `factor`, its words kept: a tagger
        that errs `factor` times as often on these words as on the treebank's (sensitivity)."""
        if self.exact:
            return self
        counts = self.counts.copy()
        diagonal = np.diag(counts).copy()
        off = counts - np.diag(diagonal)
        scaled = off * factor
        totals = counts.sum(axis=1)
        # a row whose errors would pass its words keeps no right answers and its errors scaled to them
        over = scaled.sum(axis=1) > totals
        scaled[over] *= (totals[over] / scaled[over].sum(axis=1))[:, None]
        counts = scaled + np.diag(totals - scaled.sum(axis=1))
        return Confusion(counts, f"{self.source}, errors x{factor:g}", filled=self.filled)

    def shrunk_toward(self, prior: Confusion, strength: float) -> Confusion:
        """These counts (few words: say the candidates' own) plus `strength` pseudo-words per row in
        the proportions of `prior`'s row (many words: the treebank's): a rare row follows the prior,
        a row measured on many words its own counts."""
        if prior.exact:
            return self
        pseudo = prior.matrix() * strength
        pseudo[~prior.support] = 0
        return Confusion(
            self.counts + pseudo,
            f"{self.source}, shrunk toward {prior.source} ({strength:g} words a row)",
            filled=tuple(sorted(set(self.filled) | set(prior.filled))),
        )

    def accuracy(self) -> tuple[int, int]:
        """(words tagged right, words) over the measured rows."""
        return int(np.trace(self.counts)), int(self.counts.sum())

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "counts": {
                UPOS_NAMES[t]: {UPOS_NAMES[p]: int(n) for p, n in enumerate(row) if n}
                for t, row in enumerate(self.counts)
                if row.sum() > 0
            },
        }

    def top_confusions(self, n: int = 8) -> list[tuple[str, str, int]]:
        """The largest off-diagonal counts: (true, tagger's, count)."""
        off = self.counts.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:n]
        return [(UPOS_NAMES[i // K], UPOS_NAMES[i % K], int(off.flat[i])) for i in order if off.flat[i] > 0]

    @classmethod
    def identity(cls) -> Confusion:
        return cls(np.eye(K), "none: the tagger's labels taken as the truth", exact=True)

    @classmethod
    def from_pairs(cls, true: list[int], tagged: list[int], source: str) -> Confusion:
        counts = np.zeros((K, K))
        np.add.at(counts, (np.asarray(true, dtype=int), np.asarray(tagged, dtype=int)), 1)
        return cls(counts, source)


def parse_confusion(data, where: str) -> Confusion:
    """A confusion from its JSON form; anything malformed is one ConfigError naming `where`."""
    source = f"{where}"
    if isinstance(data, dict) and "counts" in data:
        source = str(data.get("source") or where)
        data = data["counts"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: a confusion is a JSON object of true UPOS -> {{tagger's UPOS: count}}")
    counts = np.zeros((K, K))
    for true, row in data.items():
        if true not in UPOS_IDS:
            raise ConfigError(
                f"{where}: unknown UPOS label {true!r} (rows and columns are UPOS tags: {', '.join(UPOS_NAMES)})"
            )
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: the row of {true} is not an object of tagger's UPOS -> count")
        for tagged, n in row.items():
            if tagged not in UPOS_IDS:
                raise ConfigError(f"{where}: unknown UPOS label {tagged!r} in the row of {true}")
            if (
                isinstance(n, bool)
                or not isinstance(n, (int, float))
                or not 0 <= n <= MAX_COUNT
                or not math.isfinite(n)
            ):
                raise ConfigError(
                    f"{where}: count {true} -> {tagged} is {_short(n)}, not a count in [0, {MAX_COUNT:.0e}]"
                )
            counts[UPOS_IDS[true], UPOS_IDS[tagged]] = n
        if counts[UPOS_IDS[true]].sum() == 0:
            raise ConfigError(
                f"{where}: the row of {true} has no counts: leave a class the tagger was not measured on out"
            )
    return Confusion(counts, source)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_confusion_file(path: str) -> Confusion:
    from ..jsonfile import read_json

    return parse_confusion(read_json(path, "confusion file", ConfigError), path)
