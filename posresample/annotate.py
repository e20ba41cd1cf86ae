"""annotate: people label the target word in sampled completions, the answers stored as labels.

The queue (annotation_items) is built once per scan and generation params, and grown by a later
run with a larger --sample: a sample across candidates stratified by the probe's top-2 pair, the
completions whose machine label differs from the probe's argmax, or whose span the tagger found odd,
first; or, with --random, a simple random sample of all the completions (reason 'random'), the one
that measures the tagger's confusion without the disagreement-first bias. Each annotator is a tagger
named human:NAME; each answer is a `labels` row of that tagger (status ok with a UPOS, unsure, or
no_span), written when it is given. An annotator holds the item
they are shown through a lease (annotation_leases), so two annotators never see one item at once;
items marked `overlap` go to a second annotator too, for agreement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from sqlalchemy import and_, case, delete, exists, func, insert, or_, select, update

from .db import db_now, read, write
from .errors import ConfigError, DatabaseError
from .schema import (
    annotation_items,
    annotation_leases,
    candidates,
    completions,
    jobs,
    labels,
    taggers,
)

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")  # an annotator's name: lowercase letters, digits, _ . -
DEFAULT_SAMPLE = 300  # completions in the queue
LEASE_SECONDS = 600.0  # an annotator holds the item on screen this long without answering
STATUSES = ("ok", "unsure", "no_span")  # a UPOS; "can't tell"; "not a word here"


def tagger_name(annotator: str) -> str:
    if not NAME.match(annotator):
        raise ConfigError(
            f"annotator name {annotator!r} is not 1-41 lowercase letters, digits, '_', '.' or '-' "
            "(it becomes the tagger human:NAME)"
        )
    return f"human:{annotator}"


def register_annotator(engine, annotator: str) -> int:
    from .label_store import register_tagger

    return register_tagger(
        engine,
        {"name": tagger_name(annotator), "spec": f"human:{annotator}", "library": "human", "library_version": "1"},
    )


@dataclass(frozen=True)
class Item:
    id: int
    completion_id: int
    candidate_id: int
    prefix_token_ids: list
    token_ids: list
    prefix_text: str
    text: str
    target_token: str
    model: str


def build_queue(
    engine, scan_id: int, params_id: int, sample: int, overlap: float, seed: int = 0, at_random: bool = False
) -> int:
    """Add items to the queue up to `sample` (stratified, disagreements first). -> items in the queue.

    With `at_random`, `sample` is the size of a simple random sample of all the done completions
    (reason 'random'), what measures the tagger without the queue's bias (agreement.measure): drawn
    without replacement from every completion, queued or not; one already queued for another
    reason joins the sample where it stands (its reason becomes 'random'). -> random items.

    The database counts each done job's completions by why they would be shown (one GROUP BY);
    Python reads a row per job and its candidate's probe pair, picks (job, round) pairs, and reads
    the completions of the picked jobs only: never every completion of the study."""
    with write(engine) as conn:
        mine = and_(annotation_items.c.scan_id == scan_id, annotation_items.c.params_id == params_id)
        have = conn.execute(select(func.count()).select_from(annotation_items).where(mine)).scalar_one()
        if at_random:
            _grow_random_sample(conn, scan_id, params_id, sample, overlap, seed)
            return conn.execute(
                select(func.count()).select_from(annotation_items).where(mine, annotation_items.c.reason == "random")
            ).scalar_one()
        if have >= sample:
            return have
        counts, strata = _pool_counts(conn, scan_id, params_id)
        if not counts and have == 0:
            raise DatabaseError("this scan has no sampled completions to label: run `cli.py worker` first")
        picked = _stratified(conn, scan_id, params_id, counts, strata, sample - have, seed)
        _insert(conn, scan_id, params_id, picked, overlap, seed)
        return have + len(picked)


def _insert(conn, scan_id: int, params_id: int, picked: list[tuple[int, str]], overlap: float, seed: int) -> None:
    """The picked (completion id, reason) appended to the queue, after its last rank."""
    rng = np.random.default_rng(seed + 1)
    now = conn.execute(select(db_now())).scalar_one()
    top = conn.execute(
        select(func.coalesce(func.max(annotation_items.c.rank), 0)).where(
            annotation_items.c.scan_id == scan_id, annotation_items.c.params_id == params_id
        )
    ).scalar_one()
    rows = [
        dict(
            scan_id=scan_id,
            params_id=params_id,
            completion_id=completion_id,
            rank=top + 1 + i,
            overlap=bool(rng.random() < overlap),
            reason=reason,
            created_at=now,
        )
        for i, (completion_id, reason) in enumerate(picked)
    ]
    if rows:
        conn.execute(insert(annotation_items), rows)


def _grow_random_sample(conn, scan_id: int, params_id: int, sample: int, overlap: float, seed: int) -> None:
    """The random sample grown to `sample` completions (all of them, where there are fewer)."""
    mine = and_(annotation_items.c.scan_id == scan_id, annotation_items.c.params_id == params_id)
    queued = dict(conn.execute(select(annotation_items.c.completion_id, annotation_items.c.reason).where(mine)).all())
    drawn = {c for c, why in queued.items() if why == "random"}
    sizes = dict(
        conn.execute(
            select(jobs.c.id, func.count())
            .select_from(completions)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(candidates.c.scan_id == scan_id, jobs.c.params_id == params_id, jobs.c.state == "done")
            .group_by(jobs.c.id)
        ).all()
    )
    if not sizes:
        raise DatabaseError("this scan has no sampled completions to label: run `cli.py worker` first")
    jobs_ = sorted(sizes)
    ends = np.cumsum([sizes[job] for job in jobs_])
    order = np.random.default_rng(seed).permutation(int(ends[-1]))  # one seeded order of every completion
    at = np.searchsorted(ends, order, side="right")
    ranks = order - np.concatenate([[0], ends[:-1]])[at]
    members: dict[int, list[int]] = {}
    picked: list[int] = []
    for start in range(0, len(order), 4 * sample):  # the order's prefix that holds `sample` not yet drawn
        chunk = [(jobs_[i], int(r)) for i, r in zip(at[start : start + 4 * sample], ranks[start : start + 4 * sample])]
        need = sorted({job for job, _ in chunk} - set(members))
        for part in range(0, len(need), 500):
            for completion_id, job in conn.execute(
                select(completions.c.id, completions.c.job_id)
                .where(completions.c.job_id.in_(need[part : part + 500]))
                .order_by(completions.c.id)
            ):
                members.setdefault(job, []).append(completion_id)
        picked += [members[job][r] for job, r in chunk if members[job][r] not in drawn]
        if len(drawn) + len(picked) >= sample:
            break
    picked = picked[: max(sample - len(drawn), 0)]
    before = [c for c in picked if c in queued]
    if before:
        conn.execute(
            update(annotation_items).where(mine, annotation_items.c.completion_id.in_(before)).values(reason="random")
        )
    _insert(conn, scan_id, params_id, [(c, "random") for c in picked if c not in queued], overlap, seed)


FLAGGED = ("odd_span", "disagrees")  # shown first


def _reason(conn):
    """Why a completion is worth a person's look: 'odd_span' when a machine tagger found no clean
    span, 'disagrees' when a machine label differs from the probe's argmax, else 'sample'."""
    machines = conn.execute(select(taggers.c.id).where(~taggers.c.name.like("human:%"))).scalars().all()
    machine = and_(labels.c.completion_id == completions.c.id, labels.c.tagger_id.in_(machines))
    odd = exists().where(machine, labels.c.status != "ok")
    disagrees = exists().where(machine, labels.c.status == "ok", labels.c.upos != candidates.c.probe_pred)
    return case((odd, "odd_span"), (disagrees, "disagrees"), else_="sample").label("reason")


def _unqueued(query, scan_id: int, params_id: int):
    """Done completions of the scan and params that are not in the queue yet."""
    queued = exists().where(
        annotation_items.c.completion_id == completions.c.id,
        annotation_items.c.scan_id == scan_id,
        annotation_items.c.params_id == params_id,
    )
    return (
        query.join(jobs, jobs.c.id == completions.c.job_id)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == params_id, jobs.c.state == "done", ~queued)
    )


def _pool_counts(conn, scan_id: int, params_id: int) -> tuple[dict, dict]:
    """({(job, reason): completions not in the queue yet}, {job: its candidate's probe top-2 stratum})."""
    reason = _reason(conn)
    rows = conn.execute(
        _unqueued(select(jobs.c.id, reason, func.count()).select_from(completions), scan_id, params_id).group_by(
            jobs.c.id, reason
        )
    ).all()
    counts = {(job, why): n for job, why, n in rows}
    probs = conn.execute(
        select(jobs.c.id, candidates.c.probe_probs)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == params_id, jobs.c.state == "done")
    )
    strata = {job: tuple(np.argsort(-np.asarray(p), kind="stable")[:2].tolist()) for job, p in probs}
    return counts, strata


def _stratified(
    conn, scan_id: int, params_id: int, counts: dict, strata: dict, n: int, seed: int
) -> list[tuple[int, str]]:
    """n (completion id, reason): the flagged ones (odd span, disagreeing) first, then the rest;
    within each, a round robin over the probe's top-2 strata in random order, and within a stratum
    one completion of each job (in random order) before a second of any."""
    rng = np.random.default_rng(seed)
    picked: list[tuple[int, str]] = []
    for reasons in (FLAGGED, ("sample",)):
        if len(picked) >= n:
            break
        sizes = {}
        for (job, why), k in counts.items():
            if why in reasons:
                sizes[job] = sizes.get(job, 0) + k
        by_stratum: dict[tuple, list[int]] = {}
        for job in sorted(sizes):
            by_stratum.setdefault(strata[job], []).append(job)
        queues = [
            _rounds([jobs_[i] for i in rng.permutation(len(jobs_))], sizes) for _, jobs_ in sorted(by_stratum.items())
        ]
        turns = [(job, r) for job, r in _interleave([queues[i] for i in rng.permutation(len(queues))], n - len(picked))]
        picked += _completions_for(conn, scan_id, params_id, turns, reasons, rng)
    return picked[:n]


def _rounds(jobs_: list[int], sizes: dict):
    """(job, round): round 0 takes every job once, round 1 again those with a second completion..."""
    r = 0
    while row := [job for job in jobs_ if sizes[job] > r]:
        for job in row:
            yield job, r
        r += 1


def _interleave(queues: list, n: int):
    """Up to n turns, one from each queue in turn while any has turns left."""
    given = 0
    while queues and given < n:
        for q in list(queues):
            turn = next(q, None)
            if turn is None:
                queues.remove(q)
                continue
            yield turn
            given += 1
            if given == n:
                return


def _completions_for(conn, scan_id: int, params_id: int, turns: list, reasons: tuple, rng) -> list[tuple[int, str]]:
    """The completion each (job, round) turn stands for: the job's completions of these reasons, in a
    random order, the round-th of them. Reads the picked jobs' completions only."""
    members: dict[int, list[tuple[int, str]]] = {}
    wanted = sorted({job for job, _ in turns})
    reason = _reason(conn)
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            _unqueued(select(completions.c.id, completions.c.job_id, reason), scan_id, params_id)
            .where(completions.c.job_id.in_(wanted[start : start + 500]))
            .order_by(completions.c.id)
        ).all()
        for completion_id, job, why in rows:
            if why in reasons:
                members.setdefault(job, []).append((completion_id, why))
    for job in wanted:
        mine = members.get(job, [])
        members[job] = [mine[i] for i in rng.permutation(len(mine))]
    return [members[job][r] for job, r in turns if r < len(members[job])]


def _answered(tagger_id: int):
    return exists().where(labels.c.completion_id == annotation_items.c.completion_id, labels.c.tagger_id == tagger_id)


def _held_by_others(tagger_id: int):
    """Another annotator has the item on screen now (a live lease)."""
    return exists().where(
        annotation_leases.c.item_id == annotation_items.c.id,
        annotation_leases.c.tagger_id != tagger_id,
        annotation_leases.c.expires_at >= db_now(),
    )


def _answers_by_others(tagger_id: int):
    """How many other annotators answered the item."""
    return (
        select(func.count())
        .select_from(labels)
        .where(
            labels.c.completion_id == annotation_items.c.completion_id,
            labels.c.tagger_id != tagger_id,
            labels.c.tagger_id.in_(select(taggers.c.id).where(taggers.c.name.like("human:%"))),
        )
        .scalar_subquery()
    )


def next_item(engine, scan_id: int, params_id: int, tagger_id: int, owner: str) -> Item | None:
    """The item this annotator holds, or the first one free for them (leased to them in the same
    transaction; PostgreSQL skips rows another transaction has locked). None: nothing left."""
    mine = and_(annotation_items.c.scan_id == scan_id, annotation_items.c.params_id == params_id, ~_answered(tagger_id))
    held = exists().where(
        annotation_leases.c.item_id == annotation_items.c.id,
        annotation_leases.c.tagger_id == tagger_id,
        annotation_leases.c.expires_at >= db_now(),
    )
    # never on two screens at once; answered by nobody else, or by one other when it is an overlap item
    others = _answers_by_others(tagger_id)
    free = and_(~_held_by_others(tagger_id), or_(others == 0, and_(annotation_items.c.overlap, others == 1)))
    with write(engine) as conn:
        item_id = conn.execute(
            select(annotation_items.c.id).where(mine, held).order_by(annotation_items.c.rank).limit(1)
        ).scalar()
        if item_id is None:
            item_id = conn.execute(
                select(annotation_items.c.id)
                .where(mine, free)
                .order_by(annotation_items.c.rank)
                .limit(1)
                .with_for_update(skip_locked=True, of=annotation_items)
            ).scalar()
        if item_id is None:
            return None
        conn.execute(
            delete(annotation_leases).where(
                annotation_leases.c.item_id == item_id, annotation_leases.c.tagger_id == tagger_id
            )
        )
        conn.execute(
            insert(annotation_leases).values(
                item_id=item_id, tagger_id=tagger_id, owner=owner, expires_at=db_now() + LEASE_SECONDS
            )
        )
        return _item(conn, item_id)


def _item(conn, item_id: int) -> Item:
    from .schema import generation_params

    row = conn.execute(
        select(
            annotation_items.c.id,
            completions.c.id,
            candidates.c.id,
            candidates.c.prefix_token_ids,
            completions.c.token_ids,
            candidates.c.prefix_text,
            completions.c.text,
            candidates.c.target_token,
            generation_params.c.model,
        )
        .join(completions, completions.c.id == annotation_items.c.completion_id)
        .join(jobs, jobs.c.id == completions.c.job_id)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .join(generation_params, generation_params.c.id == annotation_items.c.params_id)
        .where(annotation_items.c.id == item_id)
    ).one()
    return Item(row[0], row[1], row[2], list(row[3]), list(row[4]), row[5], row[6], row[7], row[8])


class NotHeld(ConfigError):
    """An answer to an item this annotator's page does not hold (another's, or one never shown)."""


def answer(engine, item_id: int, tagger_id: int, upos: int | None, status: str, owner: str | None = None) -> bool:
    """Store one answer as a labels row (at once: closing the tab loses nothing). False when this
    annotator has answered the item already. With `owner` (the page's server), only an item this
    annotator holds a lease on, taken by that server, may be answered."""
    from .data import UPOS_NAMES
    from .scan_store import insert_ignoring_duplicates

    if status not in STATUSES or (status == "ok") != (upos is not None):
        raise ConfigError(f"an answer is a UPOS (status ok), unsure or no_span, not {status!r} / {upos!r}")
    with write(engine) as conn:
        completion = conn.execute(
            select(annotation_items.c.completion_id).where(annotation_items.c.id == item_id)
        ).scalar()
        if completion is None:
            raise ConfigError(f"no annotation item {item_id}")
        if (
            owner is not None
            and conn.execute(
                select(annotation_leases.c.item_id).where(
                    annotation_leases.c.item_id == item_id,
                    annotation_leases.c.tagger_id == tagger_id,
                    annotation_leases.c.owner == owner,
                )
            ).first()
            is None
        ):
            raise NotHeld(f"annotation item {item_id} is not held by this annotator")
        added = insert_ignoring_duplicates(
            conn,
            labels,
            [
                dict(
                    completion_id=completion,
                    tagger_id=tagger_id,
                    upos=upos,
                    upos_name=UPOS_NAMES[upos] if upos is not None else None,
                    tag=None,
                    word=None,
                    status=status,
                )
            ],
        )
        conn.execute(
            delete(annotation_leases).where(
                annotation_leases.c.item_id == item_id, annotation_leases.c.tagger_id == tagger_id
            )
        )
        return added == 1


def undo(engine, item_id: int, tagger_id: int, owner: str) -> bool:
    """Take back this annotator's answer to the item and hold the item again. False: there was none."""
    with write(engine) as conn:
        completion = conn.execute(
            select(annotation_items.c.completion_id).where(annotation_items.c.id == item_id)
        ).scalar()
        removed = conn.execute(
            delete(labels).where(labels.c.completion_id == completion, labels.c.tagger_id == tagger_id)
        ).rowcount
        if removed:  # the undone item is shown next: the one on screen goes back
            conn.execute(delete(annotation_leases).where(annotation_leases.c.tagger_id == tagger_id))
            conn.execute(
                insert(annotation_leases).values(
                    item_id=item_id, tagger_id=tagger_id, owner=owner, expires_at=db_now() + LEASE_SECONDS
                )
            )
        return bool(removed)


def undo_last(engine, scan_id: int, params_id: int, tagger_id: int, owner: str) -> bool:
    """Take back this annotator's most recent answer in this queue (across restarts: the labels row
    with the highest id). False: they have none."""
    with read(engine) as conn:
        item_id = conn.execute(
            select(annotation_items.c.id)
            .join(labels, labels.c.completion_id == annotation_items.c.completion_id)
            .where(
                annotation_items.c.scan_id == scan_id,
                annotation_items.c.params_id == params_id,
                labels.c.tagger_id == tagger_id,
            )
            .order_by(labels.c.id.desc())
            .limit(1)
        ).scalar()
    return item_id is not None and undo(engine, item_id, tagger_id, owner)


def release(engine, tagger_id: int, owner: str) -> None:
    with write(engine) as conn:
        conn.execute(
            delete(annotation_leases).where(
                annotation_leases.c.tagger_id == tagger_id, annotation_leases.c.owner == owner
            )
        )


def progress(engine, scan_id: int, params_id: int, tagger_id: int) -> dict:
    """{total, labelled (by anyone), mine, active annotators}."""
    humans = select(taggers.c.id).where(taggers.c.name.like("human:%"))
    in_queue = and_(annotation_items.c.scan_id == scan_id, annotation_items.c.params_id == params_id)
    answered_by = select(labels.c.tagger_id).where(
        labels.c.completion_id == annotation_items.c.completion_id, labels.c.tagger_id.in_(humans)
    )
    with read(engine) as conn:
        total = conn.execute(select(func.count()).select_from(annotation_items).where(in_queue)).scalar_one()
        labelled = conn.execute(
            select(func.count()).select_from(annotation_items).where(in_queue, exists(answered_by))
        ).scalar_one()
        mine = conn.execute(
            select(func.count()).select_from(annotation_items).where(in_queue, _answered(tagger_id))
        ).scalar_one()
        # an annotator at work always holds the item on screen (an answer takes the next one at once)
        active = conn.execute(
            select(func.count(func.distinct(annotation_leases.c.tagger_id))).where(
                annotation_leases.c.expires_at >= db_now()
            )
        ).scalar_one()
    return {"total": total, "labelled": labelled, "mine": mine, "active": max(active, 1)}
