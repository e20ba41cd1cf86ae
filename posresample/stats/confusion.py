"""The tagger's confusion: counts of (true UPOS -> the tagger's UPOS) on held-out words.

The file format (also how the `taggers.confusion` column holds it) is one JSON object, true label
to the tagger's label to a count:

    {"NOUN": {"NOUN": 4012, "PROPN": 61, "ADJ": 40, "VERB": 31}, "VERB": {"VERB": 2401, ...}, ...}

optionally wrapped as {"source": "...", "counts": {...}, "by_word": {...}}, where `by_word` holds
the same counts per word type (the tagger's token, lower-cased: {"that": {"SCONJ": {"SCONJ": 61,
"PRON": 9}, ...}, ...}) on the same held-out words: what `WordConfusions` estimates a confusion per
word from. A class with no row is one the tagger was
never seen on: the analysis gives it no mass (it cannot say how such words are tagged). Words the
tagger could not label (no span, not a UPOS tag) are not confusions and are left out, as `label`
leaves such completions out of the empirical counts.

For the correction each row becomes a distribution with a pseudo-count of 1/18 per cell (one word
per row in all, so nothing is impossible), and its uncertainty is the Dirichlet posterior of those
counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

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
    # the same measurement per word type: word -> [K, K] counts (None: not measured per word)
    by_word: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    # the part of `counts` that is a prior's pseudo-words, not words measured (shrunk_toward's, a word's prior)
    pseudo: np.ndarray | None = field(default=None, compare=False, repr=False)
    smoothing: float = PSEUDO_COUNT  # pseudo-words added to every cell (0 where `pseudo` is a proper prior)

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
        smoothed = self.counts + self.smoothing
        out = smoothed / np.maximum(smoothed.sum(axis=1, keepdims=True), 1e-300)
        identity = ~self.support
        identity[list(self.filled)] = True
        out[identity] = np.eye(K)[identity]
        return out

    def draws(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n, K, K] matrices from the rows' Dirichlet posterior (the identity when exact)."""
        if self.exact:
            return np.broadcast_to(np.eye(K), (n, K, K)).copy()
        gamma = rng.gamma(np.broadcast_to(self.counts + self.smoothing, (n, K, K)))
        out = gamma / np.maximum(gamma.sum(axis=2, keepdims=True), 1e-300)
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
        return replace(self, filled=tuple(sorted(set(self.filled) | set(missing))))

    def redrawn(self, rng: np.random.Generator) -> Confusion:
        """The same measurement made again: each measured row's words drawn again from its row of
        `matrix()` (a parametric bootstrap of the treebank measurement); the identity stays."""
        if self.exact:
            return self
        C = self.matrix()
        pseudo = np.zeros_like(self.counts) if self.pseudo is None else self.pseudo
        words = self.counts - pseudo
        totals = words.sum(axis=1).round().astype(np.int64)
        counts = np.zeros_like(self.counts)
        measured = totals > 0
        counts[measured] = rng.multinomial(totals[measured], C[measured])
        return replace(self, counts=counts + pseudo)

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
        return Confusion(counts, f"{self.source}, errors x{factor:g}", filled=self.filled, smoothing=self.smoothing)

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
            pseudo=pseudo + (0 if self.pseudo is None else self.pseudo),
        )

    def accuracy(self) -> tuple[int, int]:
        """(words tagged right, words) over the measured rows."""
        return int(np.trace(self.counts)), int(self.counts.sum())

    def to_json(self) -> dict:
        out = {"source": self.source, "counts": _rows_json(self.counts)}
        if self.by_word:
            out["by_word"] = {word: _rows_json(counts) for word, counts in sorted(self.by_word.items())}
        return out

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
    def from_pairs(cls, true: list[int], tagged: list[int], source: str, words: list[str] | None = None) -> Confusion:
        """Counts of (true, tagged) pairs; with `words` (each pair's word), per word type too."""
        counts = np.zeros((K, K))
        np.add.at(counts, (np.asarray(true, dtype=int), np.asarray(tagged, dtype=int)), 1)
        by_word = None
        if words is not None:
            by_word = {}
            for word, t, p in zip(words, true, tagged):
                key = word_key(word)
                if key:
                    by_word.setdefault(key, np.zeros((K, K)))[t, p] += 1
        return cls(counts, source, by_word=by_word)


def word_key(word: str | None) -> str | None:
    """A word type as the per-word confusion keys it: the tagger's token, stripped and lower-cased."""
    key = (word or "").strip().lower()
    return key or None


def _rows_json(counts: np.ndarray) -> dict:
    return {
        UPOS_NAMES[t]: {UPOS_NAMES[p]: int(n) if float(n).is_integer() else float(n) for p, n in enumerate(row) if n}
        for t, row in enumerate(counts)
        if row.sum() > 0
    }


def parse_confusion(data, where: str) -> Confusion:
    """A confusion from its JSON form; anything malformed is one ConfigError naming `where`."""
    source = f"{where}"
    by_word = None
    if isinstance(data, dict) and "counts" in data:
        source = str(data.get("source") or where)
        words = data.get("by_word")
        if words is not None:
            if not isinstance(words, dict):
                raise ConfigError(f"{where}: by_word is an object of word -> a confusion's counts")
            by_word = {}
            for word, rows in words.items():
                key = word_key(str(word))
                if key:
                    counts = _parse_rows(rows, f"{where}, word {word!r}")
                    by_word[key] = by_word.get(key, 0) + counts
        data = data["counts"]
    return Confusion(_parse_rows(data, where), source, by_word=by_word)


def _parse_rows(data, where: str) -> np.ndarray:
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
    return counts


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_confusion_file(path: str) -> Confusion:
    from ..jsonfile import read_json

    return parse_confusion(read_json(path, "confusion file", ConfigError), path)


@dataclass(frozen=True)
class PerCandidate:
    """A confusion per candidate: candidate i's is members[group[i]] (say, the tagger's confusion for
    its word). The members share their support (they are the rows of one measurement, or shrunk
    toward it); a single Confusion is the case of one member (`per_candidate`)."""

    members: tuple[Confusion, ...]
    group: np.ndarray  # [N] int: each candidate's member
    source: str

    def __post_init__(self):
        support = self.members[0].support
        if any((m.support != support).any() for m in self.members[1:]):
            raise ValueError("the members of a PerCandidate confusion must share their support")

    @property
    def exact(self) -> bool:
        return all(m.exact for m in self.members)

    @property
    def support(self) -> np.ndarray:
        return self.members[0].support

    @property
    def filled(self) -> tuple[int, ...]:
        return tuple(sorted(set().union(*(m.filled for m in self.members))))

    def matrices(self) -> np.ndarray:
        """[G, K, K] each member's matrix()."""
        return np.stack([m.matrix() for m in self.members])

    def matrix(self) -> np.ndarray:
        """[N, K, K] each candidate's matrix()."""
        return self.matrices()[self.group]

    def label_columns(self, member: np.ndarray, label: np.ndarray, n: int, rng: np.random.Generator):
        """n draws from the members' Dirichlet posteriors, one a yield, of what a Gibbs sweep reads of
        them: [P, K], row p the column C_{member[p]}[:, label[p]]. One member: its own `draws(n)`.
        Several: only the columns the pairs name are drawn, each row normalised by a Gamma of the
        rest of its pseudo-counts (a Dirichlet row is independent Gammas over their sum, and a sum
        of Gammas is one Gamma), so a sweep costs the labels seen, not K x K a member."""
        if len(self.members) == 1:
            for C in self.members[0].draws(n, rng):
                yield C[:, label].T
            return
        alpha = np.stack([m.counts + m.smoothing for m in self.members])  # [G, K, K]
        identity = np.stack([~m.support for m in self.members])  # [G, K] rows taken as the identity
        for g, m in enumerate(self.members):
            identity[g, list(m.filled)] = True
            if m.exact:
                identity[g] = True
        keys, pair = np.unique(member * K + label, return_inverse=True)  # sorted by member
        mg, ml = keys // K, keys % K  # each (member, label) column's member and label
        present, starts = np.unique(mg, return_index=True)
        local = np.searchsorted(present, mg)
        a_ml = alpha[mg, :, ml]  # [M, K] the columns' pseudo-counts, by true class
        rest = np.maximum(alpha[present].sum(axis=2) - np.add.reduceat(a_ml, starts, axis=0), 0.0)  # [G', K]
        fixed = identity[mg]  # [M, K]
        eye = (np.arange(K)[None, :] == ml[:, None]).astype(float)  # an identity row's column
        for _ in range(n):
            drawn = rng.gamma(a_ml)
            total = rng.gamma(rest) + np.add.reduceat(drawn, starts, axis=0)
            columns = np.where(fixed, eye, drawn / np.maximum(total[local], 1e-300))
            yield columns[pair]

    def subset(self, rows: np.ndarray) -> PerCandidate:
        """Candidates `rows`' confusions, with only the members they use."""
        used, group = np.unique(self.group[rows], return_inverse=True)
        return PerCandidate(tuple(self.members[g] for g in used), group.reshape(-1), self.source)

    def redrawn(self, rng: np.random.Generator) -> PerCandidate:
        return PerCandidate(tuple(m.redrawn(rng) for m in self.members), self.group, self.source)

    def scaled_errors(self, factor: float) -> PerCandidate:
        return PerCandidate(
            tuple(m.scaled_errors(factor) for m in self.members), self.group, f"{self.source}, errors x{factor:g}"
        )


def per_candidate(confusion: Confusion | PerCandidate, n: int) -> PerCandidate:
    """Any confusion as one per candidate of n."""
    if isinstance(confusion, PerCandidate):
        return confusion
    return PerCandidate((confusion,), np.zeros(n, dtype=np.int64), confusion.source)


def rows_of(confusion: Confusion | PerCandidate, rows: np.ndarray) -> Confusion | PerCandidate:
    """The confusion of candidates `rows` (a single one is everyone's)."""
    return confusion.subset(rows) if isinstance(confusion, PerCandidate) else confusion
