"""The labelling page: a small Flask app over annotate.py's statements.

GET / serves the page; GET /api/item gives the annotator's current item (leased to them) and the
progress; POST /api/answer stores an answer and gives the next item; POST /api/undo takes the last
answer back. The page puts every text in with textContent (completions are model output). POSTs
must carry the page's CSRF token in a header, a JSON body and, when the browser sends one, an
Origin of this server: a form or script on another site can do none of that. With --token (needed
to listen beyond localhost) the page must first be opened with ?token=..., which sets a cookie
every request then needs.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, abort, jsonify, make_response, request

from . import annotate
from .data import UPOS_IDS, UPOS_NAMES
from .errors import ConfigError

KEYS = {"NOUN": "n", "PROPN": "m", "VERB": "v", "AUX": "u", "ADJ": "a", "ADV": "r", "PRON": "p", "DET": "d", "ADP": "i",
        "CCONJ": "c", "SCONJ": "s", "PART": "t", "NUM": "q", "INTJ": "j", "PUNCT": ".", "SYM": "y", "X": "x"}
SPECIAL = {"unsure": ("can't tell", "?"), "no_span": ("not a word here", "-")}
UNDO_KEY = "z"


MAX_BODY_BYTES = 4096  # an answer is a few dozen bytes of JSON
LOCAL_HOSTS = ("127.0.0.1", "localhost")  # the Host names a page served on the loopback answers to
ITEM_ID_MAX = 2**31 - 1  # annotation item ids are 32-bit


def create_app(engine, scan: dict, params_id: int, tagger_id: int, annotator: str, owner: str,
               decode=None, token: str | None = None, hosts: tuple[str, ...] | None = LOCAL_HOSTS) -> Flask:
    """`hosts`: the Host names requests may carry (DNS rebinding: a page on another name that
    resolves here gets a 400, never the page or its CSRF token); None: any (a page beyond the
    loopback, which the token guards)."""
    check_token(token)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # a larger body is a 413 before it is read
    if hosts is not None:
        app.config["TRUSTED_HOSTS"] = list(hosts)  # any other Host header is a 400
    csrf = secrets.token_urlsafe(24)

    def current():
        item = annotate.next_item(engine, scan["id"], params_id, tagger_id, owner)
        return {"item": None if item is None else shown(item, decode),
                "progress": annotate.progress(engine, scan["id"], params_id, tagger_id)}

    @app.before_request
    def guard():
        request.host  # noqa: B018 (checked against TRUSTED_HOSTS: a 400 for any other name)
        if token is not None and not (_same(request.cookies.get("annotate_token", ""), token)
                                      or _same(request.args.get("token", ""), token)):
            abort(403)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin is not None and origin != request.host_url.rstrip("/"):
                abort(403)  # a cross-site request
            if not _same(request.headers.get("X-CSRF-Token", ""), csrf) or not request.is_json:
                abort(403)

    @app.after_request
    def headers(response):
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    def page():
        nonce = secrets.token_urlsafe(16)
        body = PAGE.replace("{nonce}", nonce).replace("{csrf}", csrf).replace("{buttons}", buttons()) \
            .replace("{undo_key}", UNDO_KEY) \
            .replace("{annotator}", _escape(annotate.tagger_name(annotator))).replace("{scan}", _escape(scan["name"]))
        response = make_response(body)
        response.headers["Content-Security-Policy"] = (f"default-src 'none'; script-src 'nonce-{nonce}'; "
                                                       "style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'")
        if token is not None:
            response.set_cookie("annotate_token", token, httponly=True, samesite="Strict")
        return response

    @app.get("/api/item")
    def item():
        return jsonify(current())

    @app.post("/api/answer")
    def answer():
        try:
            data = request.get_json(silent=True)
        except RecursionError:  # JSON nested thousands deep
            abort(400)
        label = str(data.get("label", "")) if isinstance(data, dict) else ""
        item_id = data.get("item_id") if isinstance(data, dict) else None
        if not isinstance(item_id, int) or isinstance(item_id, bool) or not 1 <= item_id <= ITEM_ID_MAX \
                or not (label in SPECIAL or label in KEYS):
            abort(400)  # a malformed request is the client's error, never a 500
        try:
            annotate.answer(engine, item_id, tagger_id, UPOS_IDS.get(label) if label in KEYS else None,
                            "ok" if label in KEYS else label, owner=owner)
        except annotate.NotHeld:  # another annotator's item, or one this page never showed
            abort(409)
        except ConfigError:  # no such item
            abort(400)
        return jsonify(current())

    @app.post("/api/undo")
    def undo():
        annotate.undo_last(engine, scan["id"], params_id, tagger_id, owner)
        return jsonify(current())

    return app


def shown(item: annotate.Item, decode) -> dict:
    """The item as the page shows it: the text before the target, the target, the text after it,
    and where the continuation starts (the model's words, shown apart from the prefix)."""
    from .label import target_span

    if decode is not None:
        full, span = target_span(decode, item.prefix_token_ids, item.token_ids)
        if span is not None:  # the target is the prefix's last token: the continuation starts where it ends
            return {"id": item.id, "prefix": full[:span[0]], "target": full[span[0]:span[1]], "continuation": full[span[1]:]}
    target = item.target_token.strip()  # no tokenizer here: the stored texts, glued with a space
    head = item.prefix_text[: len(item.prefix_text) - len(item.target_token.lstrip())] if target else item.prefix_text
    return {"id": item.id, "prefix": head, "target": target, "continuation": " " + item.text}


def buttons() -> str:
    out = [f'<button data-label="{name}"><kbd>{_escape(KEYS[name])}</kbd> {name}</button>' for name in UPOS_NAMES
           if name in KEYS]
    out += [f'<button data-label="{status}" class="special"><kbd>{_escape(key)}</kbd> {title}</button>'
            for status, (title, key) in SPECIAL.items()]
    out.append(f'<button id="undo" class="special"><kbd>{UNDO_KEY}</kbd> undo the last answer</button>')
    return "\n".join(out)


def check_token(token: str | None) -> None:
    if token is not None and not (token and token.isascii() and token.isprintable() and token.strip() == token):
        raise ConfigError("--token must be printable ASCII, without spaces at its ends")


def allowed_hosts(host: str, loopback: bool) -> tuple[str, ...] | None:
    """The Host names a page listening on `host` answers to: the loopback names and `host` itself;
    beyond the loopback (--token required there) any."""
    return tuple(dict.fromkeys((*LOCAL_HOSTS, host))) if loopback else None


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison of bytes: any text the request carries (non-ASCII too) is a no."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>posresample: label by hand</title>
<meta name="csrf" content="{csrf}">
<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 58em; color: #222; }
#text { font-size: 1.35em; padding: 1em; background: #fafafa; border: 1px solid #ddd; border-radius: 6px; white-space: pre-wrap; }
#prefix, #target, #continuation { unicode-bidi: isolate; }  /* an unterminated U+202E stays in its span */
#target { background: #ffe066; padding: 0 2px; border-radius: 3px; }
#continuation { color: #1f5fbf; }
#buttons { margin-top: 1em; display: flex; flex-wrap: wrap; gap: 0.4em; }
button { font: inherit; padding: 0.3em 0.7em; cursor: pointer; }
button.special { background: #f3f3f3; }
kbd { font-family: monospace; background: #eee; border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; }
#progress { color: #555; }
</style></head><body>
<h1>Label the highlighted word</h1>
<p>As <b>{annotator}</b>, scan <b>{scan}</b>. Give the highlighted word's part of speech in this sentence: the
prefix is the treebank's, <span style="color:#1f5fbf">the continuation</span> the model's. Keys are shown on
the buttons.</p>
<p id="progress"></p>
<div id="text"><span id="prefix"></span><span id="target"></span><span id="continuation"></span></div>
<p id="done" hidden>Nothing left to label: thank you.</p>
<div id="buttons">
{buttons}
</div>
<script nonce="{nonce}">
const CSRF = document.querySelector('meta[name="csrf"]').content;
let current = null, busy = false;
function show(state) {
  current = state.item;
  const p = state.progress;
  document.getElementById("progress").textContent =
    `${p.labelled} of ${p.total} labelled, ${p.active} annotator${p.active === 1 ? "" : "s"} active (${p.mine} by you)`;
  document.getElementById("done").hidden = current !== null;
  document.getElementById("text").hidden = current === null;
  if (current) {
    document.getElementById("prefix").textContent = current.prefix;
    document.getElementById("target").textContent = current.target;
    document.getElementById("continuation").textContent = current.continuation;
    document.body.dataset.item = current.id;
  } else { document.body.dataset.item = ""; }
  document.body.dataset.answered = p.mine;
}
async function call(path, body) {
  if (busy) return; busy = true;
  try {
    const r = body === undefined ? await fetch(path) : await fetch(path, {method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF}, body: JSON.stringify(body)});
    if (r.ok) show(await r.json());
  } finally { busy = false; }
}
function label(name) { if (current) call("/api/answer", {item_id: current.id, label: name}); }
document.querySelectorAll("button[data-label]").forEach(b => b.addEventListener("click", () => label(b.dataset.label)));
document.getElementById("undo").addEventListener("click", () => call("/api/undo", {}));
const KEYS = {};
document.querySelectorAll("button[data-label]").forEach(b => { KEYS[b.querySelector("kbd").textContent] = b.dataset.label; });
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "{undo_key}") { call("/api/undo", {}); e.preventDefault(); return; }
  if (KEYS[e.key]) { label(KEYS[e.key]); e.preventDefault(); }
});
call("/api/item");
</script>
</body></html>
"""
