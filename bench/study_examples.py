"""Examples of each verdict from an analysed study, as markdown: the prefix, the tagger's labels,
the corrected distribution, and a few continuations with the tag the tagger gave the target word.

    python bench/study_examples.py --report study/report --db sqlite:///study/study.db --tagger ewt --per-verdict 3

Candidates are picked at random (--seed) among those of each verdict, so the examples are not
chosen to flatter; each shows one continuation per label the tagger gave, up to --continuations.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random

from common import emit

from posresample import db
from posresample.schema import candidates, completions, jobs, labels, taggers


def continuations(engine, candidate_id: int, tagger: str, params_id: int, limit: int) -> tuple[str, list]:
    from sqlalchemy import select

    with db.read(engine) as conn:
        rows = conn.execute(
            select(labels.c.upos_name, completions.c.text)
            .join(completions, completions.c.id == labels.c.completion_id)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(taggers, taggers.c.id == labels.c.tagger_id)
            .where(
                jobs.c.candidate_id == candidate_id,
                jobs.c.params_id == params_id,
                taggers.c.name == tagger,
                labels.c.status == "ok",
            )
            .order_by(completions.c.sample_index)
        ).all()
        prefix = conn.execute(select(candidates.c.prefix_text).where(candidates.c.id == candidate_id)).scalar_one()
    by_label: dict[str, str] = {}
    for upos, text in rows:
        by_label.setdefault(upos, text)
    return prefix, list(by_label.items())[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--tagger", required=True)
    parser.add_argument("--per-verdict", type=int, default=3)
    parser.add_argument("--continuations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(os.path.join(args.report, "candidates.csv"), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(os.path.join(args.report, "summary.json"), encoding="utf-8") as handle:
        params_id = json.load(handle)["generation_params_id"]  # the continuations the report analysed
    engine = db.make_engine(args.db)
    rng = random.Random(args.seed)
    for verdict in ("genuinely_ambiguous", "probe_underconfident", "probe_wrong", "undetermined"):
        members = [r for r in rows if r["verdict"] == verdict]
        emit(f"\n**{verdict.replace('_', ' ')}** ({len(members)} called)\n")
        for r in rng.sample(members, min(args.per_verdict, len(members))):
            prefix, shown = continuations(engine, int(r["candidate_id"]), args.tagger, params_id, args.continuations)
            corrected = {
                k.removeprefix("corrected_"): float(v)
                for k, v in r.items()
                if k.startswith("corrected_") and not k.endswith(("_lo", "_hi", "first")) and v and float(v) >= 0.02
            }
            dist = ", ".join(f"{k} {v:.2f}" for k, v in sorted(corrected.items(), key=lambda kv: -kv[1]))
            emit(
                f"- *{json.dumps(prefix, ensure_ascii=False)[1:-1]}* -> target **{r['target_token'].strip()}** "
                f"(treebank {r['true_label']}, probe {r['probe_pred']} at {float(r['probe_max_prob']):.2f}; "
                f"corrected: {dist})"
            )
            for upos, text in shown:
                emit(f'  - {upos}: "…{json.dumps(text, ensure_ascii=False)[1:-1]}"')


if __name__ == "__main__":
    main()
