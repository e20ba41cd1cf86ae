"""The analysis as files: candidates.csv, summary.json, six PNG plots and one self-contained index.html.

Everything is rendered in memory first and then moved into the folder, so a failure leaves no
half-written report. The page needs no network: plots are data URIs; the candidate table's rows and
the example completions are embedded gzip-compressed (base64) and inflated in the browser
(DecompressionStream), the table a page of rows at a time and a row's examples when it is opened,
so the page stays a few MB at any size. The page is templates/report.html, autoescaped by Jinja2: sentences
and completions are untrusted (the completions are model output), and so is a distilled probe's sidecar.
"""

from __future__ import annotations

import base64
import csv
import functools
import gzip
import io
import json
import math
import os
import shutil
import tempfile

import numpy as np

from .analyze import AMBIGUOUS_BELOW, EXAMPLES_PER_LABEL, Analysis
from .data import UPOS_NAMES
from .errors import PosresampleError
from .stats.verdict import VERDICTS

CSV_SKIP = ("empirical", "probe", "corrected")  # dict columns: in the JSON of the page, not in the CSV
PLOTS = ("curve", "verdicts", "reliability", "scatter", "tv_hist", "per_label")
VERDICT_TITLES = {
    "genuinely_ambiguous": "genuinely ambiguous (second reading's lower bound >= 0.10)",
    "probe_underconfident": "one reading, the probe's argmax (probe under-confident)",
    "probe_wrong": "one reading, not the probe's argmax (probe wrong)",
    "undetermined": "neither",
}


class ReportError(PosresampleError):
    """The report's folder cannot be written, or a file it embeds is not what it should be."""


def check_output(out_dir: str) -> None:
    """Refuse a folder that cannot be made or written, before any analysis (nothing is created)."""
    target = os.path.abspath(out_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ReportError(f"cannot write the report to {out_dir}: it is a file, not a folder")
    parent = target
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write the report to {out_dir}: {parent} is not a writable folder")


def write_report(a: Analysis, out_dir: str, distill: dict | None = None) -> dict:
    """Render every file, then move them into `out_dir`; returns {name: path}. `distill`: a
    sidecar already read by load_distill_sidecar (its section joins the page)."""
    check_output(out_dir)
    files: dict[str, bytes] = {
        "candidates.csv": csv_bytes(a.rows),
        "summary.json": (json.dumps(a.summary, indent=2, allow_nan=False) + "\n").encode(),
    }
    pngs = {name: plot(a, name) for name in PLOTS}
    files.update({f"{name}.png": data for name, data in pngs.items()})
    files["index.html"] = render_html(a, pngs, distill).encode("utf-8")
    try:
        os.makedirs(out_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".report-", dir=out_dir)
        try:
            for name, data in files.items():
                with open(os.path.join(staging, name), "wb") as handle:
                    handle.write(data)
            for name in files:
                os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None
    paths = {"csv": "candidates.csv", "summary": "summary.json", "html": "index.html"}
    paths.update({name: f"{name}.png" for name in PLOTS})
    return {key: os.path.join(out_dir, name) for key, name in paths.items()} | {"html_bytes": len(files["index.html"])}


def run_report(
    engine, out_dir: str, distill_sidecar: str | None = None, confusion_file: str | None = None, **analysis
) -> tuple[Analysis, dict]:
    """`analyze`: every input read and checked before any analysis (a bad one is one line, nothing
    written), then run_analyze(engine, **analysis) and the report's files. -> (analysis, paths)"""
    from .analyze import run_analyze
    from .stats.confusion import load_confusion_file

    check_output(out_dir)
    distill = load_distill_sidecar(distill_sidecar) if distill_sidecar else None
    confusion = load_confusion_file(confusion_file) if confusion_file else None
    result = run_analyze(engine, confusion=confusion, **analysis)
    return result, write_report(result, out_dir, distill)


def json_for_script(value) -> str:
    """JSON safe inside <script>: `<` (so neither `</script>` nor `<!--` can end or change the block),
    `>`, `&` and the two line separators are written as \\u escapes."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def utf16_offsets(text: str, start: int, end: int) -> tuple[int, int]:
    """Python's code-point offsets into `text` as JavaScript's UTF-16 ones (a character outside the
    Basic Multilingual Plane, an emoji, is one code point and two UTF-16 units)."""

    def units(i: int) -> int:
        return len(text[:i].encode("utf-16-le")) // 2

    return units(start), units(end)


def utf16_examples(examples: dict, prefixes: dict) -> dict:
    """The examples as the page slices them: [suffix, start, end] with UTF-16 offsets into prefix + suffix."""
    out = {}
    for cid, groups in examples.items():
        prefix = prefixes.get(cid, "")
        out[str(cid)] = {
            label: [
                [suffix, *utf16_offsets(prefix + suffix, s, e)] if s >= 0 else [suffix, s, e] for suffix, s, e in items
            ]
            for label, items in groups.items()
        }
    return out


def packed(value) -> str:
    """JSON, gzip-compressed, base64: only [A-Za-z0-9+/=] reaches the page."""
    return base64.b64encode(
        gzip.compress(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"), 9, mtime=0)
    ).decode("ascii")


# --- the distilled probe's section ---------------------------------------------------------------


def load_distill_sidecar(path: str) -> dict:
    """A distilled probe's sidecar, read and checked before any analysis: one line on anything wrong."""
    from .jsonfile import read_json

    meta = read_json(path, "distill sidecar", ReportError, ": give the .json that `cli.py distill` wrote")
    _check(isinstance(meta, dict), path, "is not a JSON object")
    cv, data = meta.get("cross_validation"), meta.get("training_data")
    _check(isinstance(cv, dict) and isinstance(data, dict), path, "has no cross_validation and training_data")
    _check(_count(cv.get("folds")) and isinstance(cv.get("split_by"), str), path, "cross_validation.folds/split_by")
    _check(
        isinstance(meta.get("kind"), str) and _count(data.get("candidates")), path, "kind / training_data.candidates"
    )
    layers = cv.get("layers")
    _check(isinstance(layers, list) and layers, path, "cross_validation.layers is not a list of layers")
    for layer in layers:
        _check(
            isinstance(layer, dict) and _count(layer.get("layer"), zero=True) and isinstance(layer.get("scores"), dict),
            path,
            "a layer entry is not {layer: int, scores: {...}}",
        )
        for name, sc in layer["scores"].items():
            _check(isinstance(name, str) and isinstance(sc, dict), path, "a score entry is not {model: {metric: ...}}")
            for metric in ("kl", "tv", "brier", "accuracy_true_label"):
                entry = sc.get(metric)
                _check(
                    isinstance(entry, dict)
                    and _number(entry.get("mean"))
                    and isinstance(entry.get("ci95"), list)
                    and len(entry["ci95"]) == 2
                    and all(_number(x) for x in entry["ci95"]),
                    path,
                    f"score {metric} of {name!r} is not {{mean, ci95: [lo, hi]}}",
                )
    meta["_plot"] = os.path.splitext(path)[0] + "-layers.png"
    return meta


def _check(ok: bool, path: str, what: str) -> None:
    if not ok:
        raise ReportError(f"distill sidecar {path} is not a distill sidecar: {what}")


def _count(value, zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero else 1)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- CSV, plots ----------------------------------------------------------------------------------


def csv_bytes(rows: list[dict]) -> bytes:
    fields = list(dict.fromkeys(k for r in rows for k in r if k not in CSV_SKIP))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def plot(a: Analysis, name: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=100)
    {
        "curve": _curve,
        "verdicts": _verdicts,
        "reliability": _reliability,
        "scatter": _scatter,
        "tv_hist": _tv_hist,
        "per_label": _per_label,
    }[name](a, ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _curve(a: Analysis, ax) -> None:
    """The study's curve: the corrected share genuinely ambiguous by the probe's max probability."""
    bins = a.summary["corrected"]["curve"]
    x = [np.mean(b["probe_max_prob"]) for b in bins]
    y = [b["share"] for b in bins]
    err = [[b["share"] - b["ci95"][0] for b in bins], [b["ci95"][1] - b["share"] for b in bins]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="genuinely ambiguous (corrected, 95% CI)")
    raw = [
        np.mean(
            [
                r["empirical_majority_share"] < AMBIGUOUS_BELOW
                for r in a.rows
                if b["probe_max_prob"][0] <= r["probe_max_prob"] < b["probe_max_prob"][1]
            ]
        )
        for b in bins
    ]
    ax.plot(x, raw, marker="s", linestyle="--", color="grey", label=f"raw: majority share < {AMBIGUOUS_BELOW}")
    for xi, b in zip(x, bins):
        ax.annotate(
            f"n={b['n']}", (xi, b["ci95"][1]), textcoords="offset points", xytext=(0, 4), fontsize=7, ha="center"
        )
    ax.set(
        title="Is the probe's uncertainty ambiguity?",
        xlabel="probe max probability (bin)",
        ylabel="share of candidates",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper right")


def _verdicts(a: Analysis, ax) -> None:
    v = a.summary["verdict"]
    names = list(VERDICTS)
    shares = [v[k]["share"] for k in names]
    err = [[v[k]["share"] - v[k]["ci95"][0] for k in names], [v[k]["ci95"][1] - v[k]["share"] for k in names]]
    ax.bar(range(len(names)), shares, yerr=err, capsize=4, color=["#4c8bf5", "#59a14f", "#e15759", "#bab0ac"])
    called = a.summary["corrected"]["verdict_called"]
    ax.set_xticks(range(len(names)), [f"{k.replace('_', ' ')}\n(called: {called[k]})" for k in names], fontsize=7)
    ax.set(title="Verdicts: estimated population shares (95% CI)", ylabel="share of candidates", ylim=(0, 1))


def _reliability(a: Analysis, ax) -> None:
    """Probe probability vs the corrected share, every (candidate, class) pooled, in 10 bins."""
    for label, target, style in (("corrected", a.corrected, "-"), ("raw labels", a.empirical, "--")):
        q, p = a.probe.ravel(), target.ravel()
        keep = q > 0
        q, p = q[keep], p[keep]
        bins = np.minimum((q * 10).astype(int), 9)
        centers = [q[bins == b].mean() for b in range(10) if (bins == b).any()]
        means = [p[bins == b].mean() for b in range(10) if (bins == b).any()]
        ax.plot(centers, means, marker="o", linestyle=style, label=f"{label} ({len(q)} candidate-class pairs)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.set(
        title="Reliability: probe probability vs share",
        xlabel="probe probability (bin mean)",
        ylabel="share of completions",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")


def _scatter(a: Analysis, ax) -> None:
    x = [r["probe_max_prob"] for r in a.rows]
    y = [r["empirical_majority_share"] for r in a.rows]
    ax.scatter(x, y, s=10, alpha=0.5, label=f"candidates (n = {len(x)})")
    ax.axhline(AMBIGUOUS_BELOW, color="grey", linestyle="--", label=f"raw: ambiguous below {AMBIGUOUS_BELOW}")
    ax.set(
        title="Probe certainty vs raw agreement of the labels",
        xlabel="probe max probability",
        ylabel="raw majority share",
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right")


def _tv_hist(a: Analysis, ax) -> None:
    tv = [r["tv"] for r in a.rows]
    floor = [r["tv_noise_floor"] for r in a.rows]
    edges = np.linspace(0, 1, 26)
    ax.hist(tv, bins=edges, alpha=0.7, label=f"raw TV(labels, probe) (n = {len(tv)})")
    ax.hist(floor, bins=edges, alpha=0.7, label="noise floor: n draws from the probe vs the probe")
    ax.set(title="Raw total variation against its noise floor", xlabel="total variation", ylabel="candidates")
    ax.legend()


def _per_label(a: Analysis, ax) -> None:
    groups = a.summary["breakdowns"]["true_label"]
    names = [g["true_label"] for g in groups]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [g["genuinely_ambiguous"] for g in groups], 0.4, label="called genuinely ambiguous")
    ax.bar(x + 0.2, [g["mean_tv"] for g in groups], 0.4, label="mean raw TV")
    ax.set_xticks(x, [f"{n}\n({g['n']})" for n, g in zip(names, groups)], fontsize=7)
    ax.set(title="By true label (n per label below it)", ylabel="share / TV", ylim=(0, 1))
    ax.legend()


# --- the page: report.html, a Jinja2 template; Python gives it plain values and it escapes them ---


def _fmt(value) -> str:
    if isinstance(value, dict) and "ci95" in value:
        centre = value.get("share", value.get("estimate", value.get("mean")))
        lo, hi = value["ci95"]
        return f"{centre:.3f} [{lo:.3f}, {hi:.3f}]"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@functools.lru_cache(maxsize=1)
def _templates():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("posresample", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(a: Analysis, pngs: dict[str, bytes], distill: dict | None = None) -> str:
    from markupsafe import Markup

    s = a.summary
    b = s["raw"]["baselines"]
    table_rows = [
        {k: r.get(k) for k in TABLE_FIELDS + ("empirical", "probe", "corrected", "sentence_text", "prefix_text")}
        for r in a.rows
    ]
    return (
        _templates()
        .get_template("report.html")
        .render(
            title=f"posresample: scan {s['scan']}, tagger {s['tagger']['name']}",
            headline=s["headline"],
            meta=(
                f"model {s['model']}, layer {s['layer']}, split {s['split']}, generation params "
                f"{s['generation_params_id']}, "
                f"tagger {s['tagger']['spec']}; {s['candidates_analysed']} of {s['candidates_in_scan']} candidates "
                "(at least "
                f"{s['min_labelled']} labelled completions each); label prior from {s['prior_source']}"
            ),
            refits=s["corrected"]["population"]["refits"],
            **corrected_section(s),
            raw_rows=raw_section(s),
            baselines={
                "test_n": b["scored_candidates"],
                "fit_n": b["fit_candidates"],
                "fitted": f"{b['fitted_temperature']:.3g}",
                "rows": [
                    (name, [_fmt(sc[m]) for m in ("kl", "tv", "js", "brier")]) for name, sc in b["scores"].items()
                ],
            },
            breakdowns=[breakdown_section(k, rows) for k, rows in s["breakdowns"].items()],
            images=[(name, _data_uri(data)) for name, data in pngs.items()],
            robust=robustness_section(s),
            human=human_section(s.get("human_labels")),
            distill=distill_section(distill) if distill else None,
            examples=EXAMPLES_PER_LABEL,
            table_fields=TABLE_FIELDS,
            rows=packed(table_rows),
            samples=packed(utf16_examples(a.examples, {r["candidate_id"]: r["prefix_text"] for r in a.rows})),
            upos_json=Markup(json_for_script(list(UPOS_NAMES))),
        )
    )  # safe inside <script>: json_for_script's escapes


TABLE_FIELDS = (
    "candidate_id",
    "target_token",
    "true_label",
    "probe_pred",
    "probe_top2",
    "probe_max_prob",
    "verdict",
    "corrected_first",
    "q_value",
    "empirical_majority",
    "empirical_majority_share",
    "n_labelled",
    "tv",
    "tv_noise_floor",
    "out_of_probe_share",
    "tagger_on_original",
)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def corrected_section(s: dict) -> dict:
    c = s["corrected"]
    verdicts = [
        (VERDICT_TITLES[k], _fmt(s["verdict"][k]) + f" (called for {c['verdict_called'][k]})") for k in VERDICTS
    ]
    verdicts += [
        ("the labels contradict the probe (Benjamini-Hochberg, FDR 5%)", _fmt(s["probe_contradicted_fdr05"])),
        ("the distribution's top label is the probe's argmax", _fmt(c["majority_is_probe_argmax"])),
        ("mass outside the probe's classes", _fmt(c["out_of_probe_mass"])),
    ]
    raw = s["raw"]["probe_vs_empirical"]
    names = {
        "tv": "TV",
        "js": "Jensen-Shannon (bits)",
        "kl": "KL(truth || probe), probe's classes (bits)",
        "kl_all": f"KL over all labels, probe smoothed by {s['kl_smoothing']:g} (bits)",
        "brier": "Brier score of the probe",
    }
    temp = s["fitted_temperature"]
    return {
        "verdict_rows": verdicts,
        "divergences": [(names[k], _fmt(c["divergences"][k]), _fmt(raw[k])) for k in names],
        "temperature": {"corrected": f"{temp['corrected']:.3g}", "raw": f"{temp['raw']:.3g}"},
        "confusion_source": c["confusion"]["source"],
    }


def raw_section(s: dict) -> list[tuple[str, str]]:
    r = s["raw"]
    rows = [
        (
            "TV(labels, probe) / its noise floor",
            f"{_fmt(r['probe_vs_empirical']['tv'])} / {_fmt(r['noise_floor']['tv'])}",
        ),
        (
            "KL on the probe's classes / its noise floor",
            f"{_fmt(r['probe_vs_empirical']['kl'])} / {_fmt(r['noise_floor']['kl'])}",
        ),
        (f"ambiguous by majority share < {AMBIGUOUS_BELOW}", _fmt(r["ambiguous_share"])),
        ("empirical majority = true label", _fmt(r["majority_is_true_label"])),
        ("empirical majority = probe argmax", _fmt(r["majority_is_probe_argmax"])),
        ("probe argmax = true label", _fmt(r["probe_argmax_is_true_label"])),
        ("tagger on the original sentence = true label", _fmt(r["tagger_on_original_is_true_label"])),
        (
            "corr(probe max prob, majority share): Pearson / Spearman",
            " / ".join("-" if v is None else f"{v:.3f}" for v in r["corr_probe_max_prob_vs_majority_share"].values()),
        ),
    ]
    o = s["out_of_probe"]
    rows += [
        (
            f"labels outside the probe's classes ({', '.join(o['labels'])})",
            f"{_fmt(o['share_of_labels'])} of labels, in {o['candidates_with_any']} candidates",
        ),
        (
            "KL over all labels at smoothing 1e-6 / 1e-8",
            f"{o['kl_all_eps_1e-6']:.3f} / {o['kl_all_eps_1e-8']:.3f} bits "
            f"({o['kl_change_per_unit_mass_1e-6_to_1e-8']:.2f} "
            f"bits per unit of outside mass; {o['kl_share_from_out_of_probe_candidates']:.0%} of it from the "
            "candidates "
            "with outside labels)",
        ),
    ]
    research = s["research_scripts"]
    rows += [
        ("research scripts: KL(probe || tagger), nats, 1e-8 floor", _fmt(research["kl_probe_tagger_nats"])),
        ("research scripts: Brier vs the treebank label", _fmt(research["brier_vs_treebank"])),
        ("research scripts: hard-argmax Brier", _fmt(research["hard_argmax_brier"])),
    ]
    return rows


def robustness_section(s: dict) -> dict:
    """What the shares estimate, which candidates they rest on, and how far they move when the
    tagger's confusion is not the one measured on the treebank."""
    st = s.get("label_statuses") or {"labels": 0, "rates": {}}
    t = s["tagger_on_candidates"]
    tagger = (
        None
        if t["accuracy"] is None
        else {
            "accuracy": _fmt({"share": t["accuracy"], "ci95": t["ci95"]}),
            "words": t["words"],
            "all_words": None if t["all_words_accuracy"] is None else f"{t['all_words_accuracy']:.3f}",
            "uncertain": None
            if not (t.get("uncertain_tokens") or {}).get("words")
            else {
                "accuracy": _fmt({"share": t["uncertain_tokens"]["accuracy"], "ci95": t["uncertain_tokens"]["ci95"]}),
                "words": t["uncertain_tokens"]["words"],
            },
        }
    )
    c = s["corrected"]
    return {
        "estimand": s["estimand"],
        "flow": s["flow"],
        "min_labelled": s["min_labelled"],
        "reading": s["sample"]["reading"],
        "labels": f"{st['labels']:,}",
        "status_rates": ", ".join(f"{status} {rate:.1%}" for status, rate in st["rates"].items()) or "none",
        "tagger": tagger,
        "sensitivity_line": s["sensitivity_line"],
        "verdict_titles": [VERDICT_TITLES[k] for k in VERDICTS],
        "sensitivity": [
            [r["confusion"], r["source"], *(_fmt(r["verdict"][k]) for k in VERDICTS), r["intervals"]]
            for r in s["sensitivity"]
        ],
        "words": word_confusion_section(s.get("word_confusion")),
        "thresholds": [(f"{r['threshold']:.2f}", _fmt(r)) for r in s["ambiguous_by_threshold"]],
        "resampled": [
            {
                "title": f"temperature {r['temperature']:g}, top-p {r['top_p']:g} (params {r['params_id']})",
                "candidates": r["candidates"],
                "rows": [
                    [
                        VERDICT_TITLES.get(k, "second reading's mean mass"),
                        _fmt(r["other"][k]) if k in VERDICT_TITLES else _fmt_mean(r["other"][k]),
                        _fmt(r["this"][k]) if k in VERDICT_TITLES else _fmt_mean(r["this"][k]),
                        _fmt_difference(r["difference"][k]),
                    ]
                    for k in (*VERDICTS, "second_mass")
                ],
            }
            for r in s.get("other_params") or []
        ],
        "second_reading_mass": _fmt(c["second_reading_mass"]),
        "tv_above": c["probe_far_from_words"]["tv_above"],
        "far": _fmt(c["probe_far_from_words"]),
    }


def _fmt_mean(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['estimate']:.3f} ({lo:.3f}-{hi:.3f})"


def _fmt_difference(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['estimate']:+.3f} ({lo:+.3f} to {hi:+.3f})"


def word_confusion_section(w: dict | None) -> dict | None:
    """The tagger per word type: the candidates' most frequent words, how often the tagger is right
    on their held-out words, raw, shrunk toward the class rows, and as the class rows alone say."""
    if not w:
        return None

    def pct(x):
        return "" if x is None else f"{x:.1%}"

    return {
        "measured": w["candidates_with_measured_word"],
        "candidates": w["candidates"],
        "types": w["word_types_measured"],
        "rows": [
            [
                r["word"],
                r["candidates"],
                r["held_out_words"],
                pct(r.get("accuracy")),
                pct(r.get("shrunk_accuracy")),
                pct(r.get("class_rows_accuracy")),
            ]
            for r in w["words"]
        ],
    }


def human_section(h: dict | None) -> dict | None:
    """The tagger against people on the completions themselves, and people against each other."""
    if not h:
        return None
    treebank = h.get("tagger_treebank_accuracy") or {}
    dev = (treebank.get("dev") or {}).get("raw_text") if isinstance(treebank, dict) else None
    rows = []
    for name, t in h["tagger_on_completions"].items():
        top = sorted(
            ((tr, tg, n) for tr, row in t["confusion"].items() for tg, n in row.items() if tr != tg),
            key=lambda x: -x[2],
        )[:5]
        rows.append(
            [
                name,
                t["completions"],
                f"{t['right']:g}",
                _fmt(t["accuracy"]) if t["accuracy"] else "-",
                "-" if dev is None else f"{dev:.3f}",
                ", ".join(f"{a}->{b} {n}" for a, b, n in top) or "-",
                t.get("weighting", "-"),
            ]
        )
    kappas = [[" / ".join(k["annotators"]), k["completions"], k["agree"], f"{k['kappa']:.3f}"] for k in h["kappa"]]
    return {"tagger": h["tagger"], "rows": rows, "kappas": kappas}


def distill_section(meta: dict) -> dict:
    """The distilled probe's held-out scores per layer (and its layer plot, when there is one)."""
    cv, data = meta["cross_validation"], meta["training_data"]
    image = None
    if os.path.isfile(meta["_plot"]):
        with open(meta["_plot"], "rb") as handle:
            image = _data_uri(handle.read())
    return {
        "kind": meta["kind"],
        "candidates": int(data["candidates"]),
        "scan": str(data.get("scan")),
        "tagger": str(data.get("tagger")),
        "folds": int(cv["folds"]),
        "split_by": cv["split_by"],
        "image": image,
        "rows": [
            [int(r["layer"]), name, *(_fmt(sc[m]) for m in ("kl", "tv", "brier", "accuracy_true_label"))]
            for r in cv["layers"]
            for name, sc in r["scores"].items()
        ],
    }


def breakdown_section(key: str, rows: list[dict]) -> dict:
    cols = [
        key,
        "n",
        *VERDICTS,
        "raw_ambiguous_share",
        "mean_tv",
        "majority_is_true_label",
        "probe_is_true_label",
        "research_brier",
        "research_kl_nats",
    ]
    return {
        "key": key.replace("_", " "),
        "head": [c.replace("_", " ") for c in cols],
        "rows": [[_fmt(r[c]) for c in cols] for r in rows],
    }
