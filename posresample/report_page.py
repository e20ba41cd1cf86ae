"""index.html's template (str.format fields in single braces; the CSS and JS braces are doubled).

The candidate rows and the example completions arrive as gzip + base64 blocks; the script inflates
the rows once (DecompressionStream, in every current browser), shows them a page at a time, and
inflates the examples the first time a row is opened. Every value is put on the page through
esc(): the texts are model output and treebank sentences.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 110em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }}
#headline {{ font-size: 1.15em; background: #f4f8ff; border-left: 4px solid #4c8bf5; padding: 0.6em 1em; }}
#candidates th {{ cursor: pointer; background: #f3f3f3; }}
#candidates tr.row:hover {{ background: #eef5ff; cursor: pointer; }}
figure {{ display: inline-block; margin: 0.5em; }}
mark {{ background: #ffe066; }}
.bar {{ display: inline-block; height: 10px; background: #4c8bf5; vertical-align: middle; }}
.bar.emp {{ background: #f08a24; }} .bar.cor {{ background: #59a14f; }}
.detail td {{ background: #fafafa; }}
.dist td {{ border: none; padding: 1px 6px; }}
#pager button {{ margin-right: 0.5em; }}
</style></head><body>
<h1>{title}</h1>
<p id="headline">{headline}</p>
<p>{meta}</p>
<h2>The corrected view</h2>
<p>The tagger's confusion and the sampling noise modelled: population shares from an empirical-Bayes
deconvolution of the candidates' distributions, 95% intervals from a two-stage bootstrap (candidates,
then each one's distribution), widened where that is wider by the spread of {refits} replicate studies
drawn from the fitted model and analysed again; a verdict per candidate from its own 95% intervals ("called"). The rule:
genuinely ambiguous when the second reading's lower bound is at least 0.10; one reading when the first's
lower bound is at least 0.90 (under-confident probe if it is the probe's argmax, wrong probe if not);
otherwise neither is shown (undetermined). docs/design.md has the model.</p>
{corrected}
<h2>The raw view</h2>
<p>The tagger's labels taken as the truth, as the original research scripts did (bootstrap intervals over
candidates). A noise floor is what n labels drawn from the probe itself score against it.</p>
{raw}
<h2>Baselines (raw view)</h2>
<p>Scored on a held-out half of the candidates ({test_n}); the fitted temperature T = {fitted} minimises mean KL on the
other half ({fit_n}).</p>
<table id="baselines"><tr><th>baseline</th><th>KL (probe's classes)</th><th>TV</th><th>JS</th><th>Brier</th></tr>{baselines}</table>
<h2>Breakdowns</h2>
{breakdowns}
<h2>Plots</h2>
{images}
{extra}
<h2>Candidates</h2>
<p>Click a column to sort, a row to open it (or add <code>#open=ID</code> to the address). At most {examples}
example completions per label are kept for each candidate.</p>
<p id="pager"><button id="prev">previous</button><button id="next">next</button><span id="where"></span>
<label> verdict <select id="filter"><option value="">any</option></select></label></p>
<table id="candidates"><thead><tr>{header}</tr></thead><tbody></tbody></table>
<script id="rows" type="application/gzip-base64">{rows}</script>
<script id="samples" type="application/gzip-base64">{samples}</script>
<script id="upos" type="application/json">{upos}</script>
<script>
const PAGE_ROWS = 100;
const FIELDS = [...document.querySelectorAll("#candidates th")].map(th => th.dataset.key);
const body = document.querySelector("#candidates tbody");
let ROWS = [], SAMPLES = null, view = [], sortKey = "q_value", ascending = true, page = 0;
async function inflate(id) {{
  const bytes = Uint8Array.from(atob(document.getElementById(id).textContent.trim()), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}}
function esc(s) {{ return String(s ?? "").replace(/[&<>"']/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}}[c])); }}
function cell(v) {{ return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : esc(v); }}
function bars(dist, cls) {{
  return Object.entries(dist).sort((a, b) => (b[1][0] ?? b[1]) - (a[1][0] ?? a[1])).map(([k, v]) => {{
    const x = Array.isArray(v) ? v[0] : v, ci = Array.isArray(v) ? ` [${{v[1].toFixed(2)}}, ${{v[2].toFixed(2)}}]` : "";
    return `<tr><td>${{esc(k)}}</td><td><span class="bar ${{cls}}" style="width:${{Math.round(x * 200)}}px"></span> ${{x.toFixed(3)}}${{ci}}</td></tr>`;
  }}).join("");
}}
function examples(r) {{
  const groups = (SAMPLES || {{}})[r.candidate_id] || {{}};
  return Object.entries(groups).map(([label, items]) =>
    `<h4>${{esc(label)}} (${{items.length}} shown)</h4><ul>${{items.map(([suffix, s, e]) => {{
      const text = (s < 0 ? r.prefix_text + " \\u2026 " : r.prefix_text) + suffix;
      return s < 0 ? `<li>${{esc(text)}}</li>` : `<li>${{esc(text.slice(0, s))}}<mark>${{esc(text.slice(s, e))}}</mark>${{esc(text.slice(e))}}</li>`;
    }}).join("")}}</ul>`).join("");
}}
function detail(r) {{
  const sentence = r.sentence_text, target = String(r.target_token).trim();
  const at = sentence.lastIndexOf(target, Math.max(r.prefix_text.length - target.length, 0));
  const shown = at < 0 ? esc(sentence) : esc(sentence.slice(0, at)) + "<mark>" + esc(target) + "</mark>" + esc(sentence.slice(at + target.length));
  return `<td colspan="${{FIELDS.length}}"><p>sentence: ${{shown}}</p>
    <table class="dist"><tr><th>probe</th><th>raw labels</th><th>corrected (95% CI)</th></tr><tr><td><table>${{bars(r.probe, "")}}</table></td>
    <td><table>${{bars(r.empirical, "emp")}}</table></td><td><table>${{bars(r.corrected, "cor")}}</table></td></tr></table>
    <div class="examples">${{examples(r)}}</div></td>`;
}}
function order() {{
  const wanted = document.getElementById("filter").value;
  view = ROWS.filter(r => !wanted || r.verdict === wanted);
  view.sort((a, b) => (a[sortKey] > b[sortKey] ? 1 : a[sortKey] < b[sortKey] ? -1 : 0) * (ascending ? 1 : -1));
}}
function render() {{
  page = Math.max(0, Math.min(page, Math.ceil(view.length / PAGE_ROWS) - 1));
  const shown = view.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS);
  body.innerHTML = shown.map(r => `<tr class="row" data-id="${{esc(r.candidate_id)}}">${{FIELDS.map(f => `<td>${{cell(r[f])}}</td>`).join("")}}</tr>`).join("");
  document.getElementById("where").textContent = ` rows ${{view.length ? page * PAGE_ROWS + 1 : 0}}-${{page * PAGE_ROWS + shown.length}} of ${{view.length}}`;
  document.body.dataset.rowsShown = shown.length;
}}
async function openRow(tr) {{
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("detail")) {{ next.remove(); return; }}
  if (SAMPLES === null) SAMPLES = await inflate("samples");
  const r = ROWS.find(x => String(x.candidate_id) === tr.dataset.id);
  const d = document.createElement("tr"); d.className = "detail"; d.innerHTML = detail(r); tr.after(d);
  return d;
}}
document.querySelectorAll("#candidates th").forEach(th => th.addEventListener("click", () => {{
  ascending = sortKey === th.dataset.key ? !ascending : true; sortKey = th.dataset.key; order(); render();
}}));
body.addEventListener("click", e => {{ const tr = e.target.closest("tr.row"); if (tr) openRow(tr); }});
document.getElementById("prev").addEventListener("click", () => {{ page -= 1; render(); }});
document.getElementById("next").addEventListener("click", () => {{ page += 1; render(); }});
document.getElementById("filter").addEventListener("change", () => {{ page = 0; order(); render(); }});
(async () => {{
  ROWS = await inflate("rows");
  for (const v of [...new Set(ROWS.map(r => r.verdict))].sort()) {{
    const o = document.createElement("option"); o.value = v; o.textContent = v; document.getElementById("filter").append(o);
  }}
  order(); render();
  document.body.dataset.rowsLoaded = ROWS.length;
  const m = location.hash.match(/open=([0-9]+)/);
  if (m) {{
    const at = view.findIndex(r => String(r.candidate_id) === m[1]);
    if (at >= 0) {{ page = Math.floor(at / PAGE_ROWS); render(); const tr = body.querySelector(`tr.row[data-id="${{m[1]}}"]`);
      await openRow(tr); tr.scrollIntoView(); document.body.dataset.opened = m[1]; }}
  }}
  document.body.dataset.ready = "1";
}})();
window.addEventListener("load", () => {{
  document.body.dataset.imagesLoaded = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
