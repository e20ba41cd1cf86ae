"""How good the labels are on the completions themselves: people's labels (annotate) against the
tagger's on the same completions, and people against each other.

- The tagger's confusion on completions: rows the human label (taken as the truth), columns the
  tagger's, over completions both labelled with a UPOS (status ok); its accuracy with a Jeffreys
  95% interval; beside the treebank accuracy the tagger's sidecar records.
- Cohen's kappa (scikit-learn) for each pair of annotators on the completions both labelled, every
  answer a category (a UPOS, "unsure", "no_span").
- `confusion_from`: that confusion as the one to correct with (`analyze --confusion-from human:NAME`);
  classes the people never gave keep the tagger's treebank row, since a few hundred completions
  cannot measure every class.

annotate's default queue shows first the completions the tagger disagreed on, so counting the
answered ones as they come would overstate its errors. Where people answered items drawn at random
(`annotate --random`), those alone measure the tagger. Otherwise each answered completion is
weighted by its stratum (the tagger's label against the probe's argmax: agrees, disagrees, or no
clean span): weight = (the stratum's share of all the tagger's labels) / (its share of the
answered ones), post-stratification, normalised to the answered count.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from . import db
from .data import UPOS_NAMES, K
from .errors import ConfigError
from .schema import candidates, completions, jobs, labels, taggers
from .stats.confusion import Confusion, parse_confusion


def _labels_of(tagger_id: int, scan_id: int, params_id: int, *columns):
    """SELECT `columns` of one tagger's labels of a scan's completions under one generation params."""
    return (
        select(*columns)
        .select_from(labels)
        .join(completions, completions.c.id == labels.c.completion_id)
        .join(jobs, jobs.c.id == completions.c.job_id)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(labels.c.tagger_id == tagger_id, candidates.c.scan_id == scan_id, jobs.c.params_id == params_id)
    )


def answers(engine, scan_id: int, params_id: int, tagger_id: int) -> dict[int, tuple[str, int | None]]:
    """{completion id: (status, upos)} of one tagger (or annotator) over a scan's completions."""
    with db.read(engine) as conn:
        rows = conn.execute(
            _labels_of(tagger_id, scan_id, params_id, labels.c.completion_id, labels.c.status, labels.c.upos)
        ).all()
    return {cid: (status, upos) for cid, status, upos in rows}


def human_taggers(engine) -> list[dict]:
    with db.read(engine) as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(taggers).where(taggers.c.name.like("human:%")).order_by(taggers.c.id)
            ).mappings()
        ]


def tagger_vs_human(human: dict, machine: dict, weights: dict | None = None) -> tuple[dict, Confusion]:
    """The machine's accuracy on the completions a person labelled with a UPOS, and its confusion
    there (rows the person's label); `weights` {completion id: weight} (`stratum_weights`), else 1."""
    from .stats.metrics import jeffreys_interval

    both = [c for c, h in human.items() if h[0] == "ok" and c in machine and machine[c][0] == "ok"]
    counts = np.zeros((K, K))
    np.add.at(
        counts,
        (np.array([human[c][1] for c in both], dtype=int), np.array([machine[c][1] for c in both], dtype=int)),
        np.array([1.0 if weights is None else weights[c] for c in both]),
    )
    if weights is not None and len(both):
        counts *= len(both) / counts.sum()  # the weights' scale: as many as were answered
    confusion = Confusion(counts, "")
    right = float(np.trace(confusion.counts))
    return {
        "completions": len(both),
        "right": int(right),
        "accuracy": jeffreys_interval(right, len(both)) if both else None,
        "machine_unlabelled": sum(1 for h in human.values() if h[0] == "ok") - len(both),
        "human_unsure": sum(1 for h in human.values() if h[0] == "unsure"),
        "human_no_span": sum(1 for h in human.values() if h[0] == "no_span"),
        "confusion": confusion.to_json()["counts"],
    }, confusion


def kappa(a: dict, b: dict) -> dict | None:
    """Cohen's kappa between two annotators over the completions both answered."""
    from sklearn.metrics import cohen_kappa_score

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    cat = lambda ans: UPOS_NAMES[ans[1]] if ans[0] == "ok" else ans[0]  # noqa: E731
    first, second = [cat(a[c]) for c in common], [cat(b[c]) for c in common]
    agree = sum(x == y for x, y in zip(first, second))
    value = cohen_kappa_score(first, second) if len(set(first) | set(second)) > 1 else 1.0
    return {"completions": len(common), "agree": agree, "kappa": float(value)}


def summary(engine, scan_id: int, params_id: int, tagger: dict) -> dict | None:
    """Everything analyze reports about human labels (None when there are none)."""
    humans = human_taggers(engine)
    if not humans:
        return None
    machine = answers(engine, scan_id, params_id, tagger["id"]) if not tagger["name"].startswith("human:") else {}
    given = {h["name"]: answers(engine, scan_id, params_id, h["id"]) for h in humans}
    out = {
        "annotators": {
            name: {"answers": len(a), "ok": sum(s == "ok" for s, _ in a.values())} for name, a in given.items()
        },
        "tagger": tagger["name"],
        "tagger_treebank_accuracy": tagger.get("accuracy"),
        "tagger_on_completions": {
            name: measure(engine, scan_id, params_id, tagger["id"], a, machine)[0] for name, a in given.items()
        }
        if machine
        else {},
        "kappa": [],
    }
    names = list(given)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            k = kappa(given[x], given[y])
            if k is not None:
                out["kappa"].append({"annotators": [x, y], **k})
    return out


def confusion_from(engine, scan_id: int, params_id: int, tagger: dict, human_name: str) -> Confusion:
    """The tagger's confusion measured against a person's labels on these completions: from the
    items drawn at random where there are any, else weighted by stratum (`stratum_weights`)."""
    with db.read(engine) as conn:
        human = conn.execute(select(taggers).where(taggers.c.name == human_name)).mappings().first()
    if human is None:
        raise ConfigError(f"no annotator {human_name!r} in the database (annotate --annotator NAME makes human:NAME)")
    if tagger["name"] == human_name:
        raise ConfigError(
            f"--confusion-from {human_name} is the tagger analysed itself: pick a machine tagger with --tagger"
        )
    measured, confusion = measure(
        engine, scan_id, params_id, tagger["id"], answers(engine, scan_id, params_id, human["id"])
    )
    how = measured["weighting"]
    if measured["completions"] == 0:
        raise ConfigError(f"{human_name} and tagger {tagger['name']!r} labelled no completion in common with a UPOS")
    counts = confusion.counts.copy()
    source = f"{tagger['name']} against {human_name} on {measured['completions']} completions ({how})"
    if tagger.get("confusion"):  # classes the person never gave: the treebank's measurement of them
        treebank = parse_confusion(tagger["confusion"], f"the confusion stored with tagger {tagger['name']}").counts
        missing = counts.sum(axis=1) == 0
        counts[missing] = treebank[missing]
        if missing.any() and treebank[missing].sum() > 0:
            source += "; classes not in them from the treebank"
    return Confusion(counts, source)


def measure(
    engine, scan_id: int, params_id: int, tagger_id: int, given: dict, machine: dict | None = None
) -> tuple[dict, Confusion]:
    """`tagger_vs_human` on one person's answers `given`, the way they stand for the study: the items
    drawn at random alone where the person answered any, else all, weighted by stratum. `machine`:
    the tagger's `answers`, where the caller has read them already."""
    if machine is None:
        machine = answers(engine, scan_id, params_id, tagger_id)
    drawn = random_items(engine, scan_id, params_id)
    if any(c in drawn for c in given):
        measured, confusion = tagger_vs_human({c: a for c, a in given.items() if c in drawn}, machine)
        return {**measured, "weighting": "drawn at random"}, confusion
    weights, how = stratum_weights(engine, scan_id, params_id, tagger_id, given, machine)
    measured, confusion = tagger_vs_human(given, machine, weights)
    return {**measured, "weighting": how}, confusion


def random_items(engine, scan_id: int, params_id: int) -> set[int]:
    """The completions annotate drew at random (`annotate --random`) for this scan and params."""
    from .schema import annotation_items

    with db.read(engine) as conn:
        return set(
            conn.execute(
                select(annotation_items.c.completion_id).where(
                    annotation_items.c.scan_id == scan_id,
                    annotation_items.c.params_id == params_id,
                    annotation_items.c.reason == "random",
                )
            ).scalars()
        )


STRATA = ("agrees", "disagrees", "odd_span")


def stratum(status: str, upos: int | None, probe_pred: int) -> str:
    """A completion's stratum by the tagger's label: what annotate's queue picks by."""
    return "odd_span" if status != "ok" else ("disagrees" if upos != probe_pred else "agrees")


def stratum_weights(
    engine, scan_id: int, params_id: int, tagger_id: int, given: dict, machine: dict
) -> tuple[dict[int, float], str]:
    """{answered completion: weight}, post-stratified: (the stratum's count among all the tagger's
    labels of these completions) / (its count among the answered), so the answered completions
    stand for the study however the queue ordered them. -> (weights, a description)"""
    with db.read(engine) as conn:
        probe_pred = dict(
            conn.execute(
                _labels_of(tagger_id, scan_id, params_id, labels.c.completion_id, candidates.c.probe_pred)
            ).all()
        )
    population = {name: 0 for name in STRATA}
    for completion_id, (status, upos) in machine.items():
        population[stratum(status, upos, probe_pred[completion_id])] += 1
    of = {c: stratum(*machine[c], probe_pred[c]) for c in given if c in machine}
    answered = {name: sum(1 for s in of.values() if s == name) for name in STRATA}
    weights = {c: population[s] / answered[s] for c, s in of.items()}
    shares = ", ".join(f"{name} {answered[name]} of {population[name]}" for name in STRATA if population[name])
    return weights, f"weighted by stratum: {shares}"
