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
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from . import db
from .data import UPOS_NAMES
from .errors import ConfigError
from .schema import candidates, completions, jobs, labels, taggers
from .stats.confusion import Confusion, parse_confusion


def answers(engine, scan_id: int, params_id: int, tagger_id: int) -> dict[int, tuple[str, int | None]]:
    """{completion id: (status, upos)} of one tagger (or annotator) over a scan's completions."""
    with db.read(engine) as conn:
        rows = conn.execute(
            select(labels.c.completion_id, labels.c.status, labels.c.upos)
            .join(completions, completions.c.id == labels.c.completion_id)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(labels.c.tagger_id == tagger_id, candidates.c.scan_id == scan_id, jobs.c.params_id == params_id)
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


def tagger_vs_human(human: dict, machine: dict) -> tuple[dict, Confusion]:
    """The machine's accuracy on the completions a person labelled with a UPOS, and its confusion
    there (rows the person's label)."""
    from .stats.metrics import jeffreys_interval

    both = [c for c, h in human.items() if h[0] == "ok" and c in machine and machine[c][0] == "ok"]
    confusion = Confusion.from_pairs([human[c][1] for c in both], [machine[c][1] for c in both], "")
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
        "tagger_on_completions": {name: tagger_vs_human(a, machine)[0] for name, a in given.items()} if machine else {},
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
    """The tagger's confusion measured against a person's labels on these completions."""
    with db.read(engine) as conn:
        human = conn.execute(select(taggers).where(taggers.c.name == human_name)).mappings().first()
    if human is None:
        raise ConfigError(f"no annotator {human_name!r} in the database (annotate --annotator NAME makes human:NAME)")
    if tagger["name"] == human_name:
        raise ConfigError(
            f"--confusion-from {human_name} is the tagger analysed itself: pick a machine tagger with --tagger"
        )
    measured, confusion = tagger_vs_human(
        answers(engine, scan_id, params_id, human["id"]), answers(engine, scan_id, params_id, tagger["id"])
    )
    if measured["completions"] == 0:
        raise ConfigError(f"{human_name} and tagger {tagger['name']!r} labelled no completion in common with a UPOS")
    counts = confusion.counts.copy()
    source = f"{tagger['name']} against {human_name} on {measured['completions']} completions"
    if tagger.get("confusion"):  # classes the person never gave: the treebank's measurement of them
        treebank = parse_confusion(tagger["confusion"], f"the confusion stored with tagger {tagger['name']}").counts
        missing = counts.sum(axis=1) == 0
        counts[missing] = treebank[missing]
        if missing.any() and treebank[missing].sum() > 0:
            source += "; classes not in them from the treebank"
    return Confusion(counts, source)
