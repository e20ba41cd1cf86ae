"""The analysis as files: candidates.csv, summary.json, four PNG plots and one self-contained index.html.

The page needs no network: plots are embedded as data URIs, the candidate table is built by a little
vanilla JS from embedded JSON (sortable by any column; a row opens the prefix with the target
highlighted, the probe's and the empirical distributions as bars, and example completions grouped
by the label the target took; at most analyze.EXAMPLES_PER_LABEL per label, as the page says).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os

import numpy as np

from .analyze import AMBIGUOUS_BELOW, EXAMPLES_PER_LABEL, Analysis
from .data import UPOS_NAMES

CSV_SKIP = ("empirical", "probe")  # dict columns: in the JSON of the page, not in the CSV
PLOTS = ("reliability", "scatter", "tv_hist", "per_label")


def write_report(a: Analysis, out_dir: str, distill_sidecar: str | None = None) -> dict:
    """Write every file; returns {name: path}. With a distilled probe's sidecar, its section too."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "candidates.csv"), "summary": os.path.join(out_dir, "summary.json"),
             "html": os.path.join(out_dir, "index.html")}
    write_csv(a.rows, paths["csv"])
    with open(paths["summary"], "w", encoding="utf-8") as handle:
        json.dump(a.summary, handle, indent=2)
        handle.write("\n")
    pngs = {name: plot(a, name) for name in PLOTS}
    for name, data in pngs.items():
        paths[name] = os.path.join(out_dir, f"{name}.png")
        with open(paths[name], "wb") as handle:
            handle.write(data)
    with open(paths["html"], "w", encoding="utf-8") as handle:
        handle.write(render_html(a, pngs, distill_section(distill_sidecar) if distill_sidecar else ""))
    return paths


def distill_section(sidecar: str) -> str:
    """The distilled probe's held-out scores per layer (and its layer plot, when there is one)."""
    with open(sidecar, encoding="utf-8") as handle:
        meta = json.load(handle)
    cv = meta["cross_validation"]
    rows = "".join(
        f"<tr><td>{r['layer']}</td><td>{html.escape(name)}</td>" +
        "".join(f"<td>{_fmt(sc[m])}</td>" for m in ("kl", "tv", "brier", "accuracy_true_label")) + "</tr>"
        for r in cv["layers"] for name, sc in r["scores"].items())
    plot = os.path.splitext(sidecar)[0] + "-layers.png"
    image = ""
    if os.path.isfile(plot):
        with open(plot, "rb") as handle:
            image = f'<figure><img alt="layer curve" src="data:image/png;base64,{base64.b64encode(handle.read()).decode()}"></figure>'
    data = meta["training_data"]
    return (f"<h2>Distilled probe</h2><p>{html.escape(meta['kind'])}; {data['candidates']} candidates of scan "
            f"{html.escape(str(data['scan']))}, tagger {html.escape(str(data['tagger']))}; {cv['folds']}-fold cross-validation "
            f"split by {html.escape(cv['split_by'])}; held-out scores, 95% bootstrap intervals.</p>"
            f"<table id=\"distill\"><tr><th>layer</th><th>model</th><th>KL</th><th>TV</th><th>Brier</th>"
            f"<th>accuracy (true label)</th></tr>{rows}</table>{image}")


def write_csv(rows: list[dict], path: str) -> None:
    fields = [k for k in rows[0] if k not in CSV_SKIP]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(a: Analysis, name: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=100)
    {"reliability": _reliability, "scatter": _scatter, "tv_hist": _tv_hist, "per_label": _per_label}[name](a, ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _reliability(a: Analysis, ax) -> None:
    """Probe probability vs empirical share, every (candidate, class) pooled, in 10 bins."""
    q, p = a.probe.ravel(), a.empirical.ravel()
    keep = q > 0
    q, p = q[keep], p[keep]
    bins = np.minimum((q * 10).astype(int), 9)
    centers, means, counts = [], [], []
    for b in range(10):
        sel = bins == b
        if sel.any():
            centers.append(q[sel].mean())
            means.append(p[sel].mean())
            counts.append(int(sel.sum()))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot(centers, means, marker="o", label=f"probe (n = {len(q)} candidate-class pairs)")
    for x, y, c in zip(centers, means, counts):
        ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(title="Reliability: probe probability vs empirical share", xlabel="probe probability (bin mean)",
           ylabel="empirical share of completions", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")


def _scatter(a: Analysis, ax) -> None:
    x = [r["probe_max_prob"] for r in a.rows]
    y = [r["empirical_majority_share"] for r in a.rows]
    ax.scatter(x, y, s=10, alpha=0.5, label=f"candidates (n = {len(x)})")
    ax.axhline(AMBIGUOUS_BELOW, color="grey", linestyle="--", label=f"ambiguous below {AMBIGUOUS_BELOW}")
    ax.set(title="Probe certainty vs empirical agreement", xlabel="probe max probability",
           ylabel="empirical majority share", ylim=(0, 1.02))
    ax.legend(loc="lower right")


def _tv_hist(a: Analysis, ax) -> None:
    tv = [r["tv"] for r in a.rows]
    floor = [r["tv_noise_floor"] for r in a.rows]
    edges = np.linspace(0, 1, 26)
    ax.hist(tv, bins=edges, alpha=0.7, label=f"TV(empirical, probe) (n = {len(tv)})")
    ax.hist(floor, bins=edges, alpha=0.7, label="noise floor: TV of two samples of n")
    ax.set(title="Total variation against its noise floor", xlabel="total variation", ylabel="candidates")
    ax.legend()


def _per_label(a: Analysis, ax) -> None:
    groups = a.summary["breakdowns"]["true_label"]
    names = [g["true_label"] for g in groups]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [g["ambiguous_share"] for g in groups], 0.4, label="ambiguous share")
    ax.bar(x + 0.2, [g["mean_tv"] for g in groups], 0.4, label="mean TV")
    ax.set_xticks(x, [f"{n}\n({g['n']})" for n, g in zip(names, groups)], fontsize=7)
    ax.set(title="By true label (n per label below it)", ylabel="share / TV", ylim=(0, 1))
    ax.legend()


def _fmt(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        lo, hi = value["ci95"]
        return f"{value['mean']:.3f} [{lo:.3f}, {hi:.3f}]"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def render_html(a: Analysis, pngs: dict[str, bytes], extra: str = "") -> str:
    s = a.summary
    summary_rows = [
        ("candidates analysed", f"{s['candidates_analysed']} of {s['candidates_in_scan']} (at least {s['min_labelled']} labelled completions)"),
        ("TV(empirical, probe)", _fmt(s["probe_vs_empirical"]["tv"])),
        ("JS divergence (bits)", _fmt(s["probe_vs_empirical"]["js"])),
        (f"KL(empirical || probe), probe smoothed by {s['kl_smoothing']:g}", _fmt(s["probe_vs_empirical"]["kl"])),
        ("Brier score of the probe", _fmt(s["probe_vs_empirical"]["brier"])),
        ("TV noise floor (two samples of n)", _fmt(s["tv_noise_floor"])),
        ("share with TV above twice its floor", _fmt(s["tv_above_noise_floor_share"])),
        (f"genuinely ambiguous (majority share < {AMBIGUOUS_BELOW})", _fmt(s["ambiguous_share"])),
        ("empirical majority = true label", _fmt(s["majority_is_true_label"])),
        ("empirical majority = probe argmax", _fmt(s["majority_is_probe_argmax"])),
        ("probe argmax = true label", _fmt(s["probe_argmax_is_true_label"])),
        ("tagger on the original sentence = true label", _fmt(s["tagger_on_original_is_true_label"])),
        ("corr(probe max prob, majority share): Pearson / Spearman",
         " / ".join("-" if v is None else f"{v:.3f}" for v in s["corr_probe_max_prob_vs_majority_share"].values())),
    ]
    b = s["baselines"]
    baseline_rows = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(sc[m])}</td>" for m in ("kl", "tv", "js", "brier")) + "</tr>"
        for name, sc in b["scores"].items())
    breakdown_html = "".join(_breakdown_table(key, rows) for key, rows in s["breakdowns"].items())
    images = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
                     for name, data in pngs.items())
    data = {"rows": [{k: r[k] for k in TABLE_FIELDS + ("empirical", "probe", "sentence_text", "prefix_text")} for r in a.rows],
            "examples": {str(k): v for k, v in a.examples.items()}}
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return PAGE.format(
        title=html.escape(f"posresample: scan {s['scan']}, tagger {s['tagger']['name']}"),
        meta=html.escape(f"model {s['model']}, layer {s['layer']}, split {s['split']}, generation params {s['generation_params_id']}, "
                         f"tagger {s['tagger']['spec']}; label prior from {s['prior_source']}"),
        summary="".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in summary_rows),
        fitted=f"{b['fitted_temperature']:.3g}", fit_n=b["fit_candidates"], test_n=b["scored_candidates"],
        baselines=baseline_rows, breakdowns=breakdown_html, images=images, examples=EXAMPLES_PER_LABEL, extra=extra,
        header="".join(f'<th data-key="{k}">{html.escape(k)}</th>' for k in TABLE_FIELDS), data=payload,
        upos=json.dumps(list(UPOS_NAMES)))


TABLE_FIELDS = ("candidate_id", "target_token", "true_label", "probe_pred", "probe_top2", "probe_max_prob",
                "empirical_majority", "empirical_majority_share", "n_labelled", "tv", "tv_noise_floor", "js",
                "entropy_empirical", "entropy_probe", "tagger_on_original")


def _breakdown_table(key: str, rows: list[dict]) -> str:
    cols = [key, "n", "mean_tv", "ambiguous_share", "majority_is_true_label", "probe_is_true_label"]
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<h3>By {html.escape(key.replace('_', ' '))}</h3><table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{body}</table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; }}
#candidates th {{ cursor: pointer; background: #f3f3f3; }}
#candidates tr.row:hover {{ background: #eef5ff; cursor: pointer; }}
figure {{ display: inline-block; margin: 0.5em; }}
mark {{ background: #ffe066; }}
.bar {{ display: inline-block; height: 10px; background: #4c8bf5; vertical-align: middle; }}
.bar.emp {{ background: #f08a24; }}
.detail td {{ background: #fafafa; }}
.dist td {{ border: none; padding: 1px 6px; }}
</style></head><body>
<h1>{title}</h1>
<p>{meta}</p>
<h2>Summary (95% bootstrap intervals over candidates)</h2>
<table id="summary">{summary}</table>
<h2>Baselines</h2>
<p>Scored on a held-out half of the candidates ({test_n}); the fitted temperature T = {fitted} minimises mean KL on the
other half ({fit_n}): how far a one-parameter recalibration of the probe closes the gap.</p>
<table id="baselines"><tr><th>baseline</th><th>KL</th><th>TV</th><th>JS</th><th>Brier</th></tr>{baselines}</table>
<h2>Breakdowns</h2>
{breakdowns}
<h2>Plots</h2>
{images}
{extra}
<h2>Candidates</h2>
<p>Click a column to sort, a row to open it (or add <code>#open=ID</code> to the address). At most {examples}
example completions per label are embedded.</p>
<table id="candidates"><thead><tr>{header}</tr></thead><tbody></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>
const DATA = JSON.parse(document.getElementById("data").textContent);
const FIELDS = [...document.querySelectorAll("#candidates th")].map(th => th.dataset.key);
const body = document.querySelector("#candidates tbody");
let sortKey = "tv", ascending = false;
function esc(s) {{ return String(s ?? "").replace(/[&<>"]/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}}[c])); }}
function cell(v) {{ return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : esc(v); }}
function bars(dist, cls) {{
  return Object.entries(dist).sort((a, b) => b[1] - a[1]).map(([k, v]) =>
    `<tr><td>${{esc(k)}}</td><td><span class="bar ${{cls}}" style="width:${{Math.round(v * 200)}}px"></span> ${{v.toFixed(3)}}</td></tr>`).join("");
}}
function detail(r) {{
  const prefix = r.sentence_text;
  const groups = DATA.examples[r.candidate_id] || {{}};
  const ex = Object.entries(groups).map(([label, items]) =>
    `<h4>${{esc(label)}} (${{items.length}} shown)</h4><ul>${{items.map(([text, s, e]) =>
      `<li>${{esc(text.slice(0, s))}}<mark>${{esc(text.slice(s, e))}}</mark>${{esc(text.slice(e))}}</li>`).join("")}}</ul>`).join("");
  const target = r.target_token.trim(), at = prefix.lastIndexOf(target, Math.max(r.prefix_text.length - target.length, 0));
  const sentence = at < 0 ? esc(prefix) : esc(prefix.slice(0, at)) + "<mark>" + esc(target) + "</mark>" + esc(prefix.slice(at + target.length));
  return `<td colspan="${{FIELDS.length}}"><p>sentence: ${{sentence}}</p>
    <table class="dist"><tr><th>probe</th><th>empirical</th></tr><tr><td><table>${{bars(r.probe, "")}}</table></td>
    <td><table>${{bars(r.empirical, "emp")}}</table></td></tr></table><div class="examples">${{ex}}</div></td>`;
}}
function render() {{
  const rows = [...DATA.rows].sort((a, b) => (a[sortKey] > b[sortKey] ? 1 : a[sortKey] < b[sortKey] ? -1 : 0) * (ascending ? 1 : -1));
  body.innerHTML = rows.map(r => `<tr class="row" data-id="${{r.candidate_id}}">${{FIELDS.map(f => `<td>${{cell(r[f])}}</td>`).join("")}}</tr>`).join("");
}}
document.querySelectorAll("#candidates th").forEach(th => th.addEventListener("click", () => {{
  ascending = sortKey === th.dataset.key ? !ascending : false; sortKey = th.dataset.key; render();
}}));
body.addEventListener("click", e => {{
  const tr = e.target.closest("tr.row"); if (!tr) return;
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("detail")) {{ next.remove(); return; }}
  const r = DATA.rows.find(x => String(x.candidate_id) === tr.dataset.id);
  const d = document.createElement("tr"); d.className = "detail"; d.innerHTML = detail(r); tr.after(d);
}});
render();
// for readers and tests: how many plots decoded, and #open=ID opens that candidate on load
window.addEventListener("load", () => {{
  document.body.dataset.imagesLoaded = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  const m = location.hash.match(/open=([0-9]+)/);
  const tr = m && body.querySelector(`tr.row[data-id="${{m[1]}}"]`);
  if (tr) {{ tr.click(); tr.scrollIntoView(); }}
}});
</script>
</body></html>
"""
