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
import ipaddress
import logging
import secrets
import socket

from flask import Flask, abort, jsonify, make_response, render_template, request

from . import annotate
from .data import UPOS_IDS, UPOS_NAMES
from .errors import ConfigError

log = logging.getLogger(__name__)

KEYS = {
    "NOUN": "n",
    "PROPN": "m",
    "VERB": "v",
    "AUX": "u",
    "ADJ": "a",
    "ADV": "r",
    "PRON": "p",
    "DET": "d",
    "ADP": "i",
    "CCONJ": "c",
    "SCONJ": "s",
    "PART": "t",
    "NUM": "q",
    "INTJ": "j",
    "PUNCT": ".",
    "SYM": "y",
    "X": "x",
}
SPECIAL = {"unsure": ("can't tell", "?"), "no_span": ("not a word here", "-")}
UNDO_KEY = "z"


MAX_BODY_BYTES = 4096  # an answer is a few dozen bytes of JSON
LOCAL_HOSTS = ("127.0.0.1", "localhost")  # the Host names a page served on the loopback answers to
ITEM_ID_MAX = 2**31 - 1  # annotation item ids are 32-bit


def create_app(
    engine,
    scan: dict,
    params_id: int,
    tagger_id: int,
    annotator: str,
    owner: str,
    detokenize=None,
    token: str | None = None,
    hosts: tuple[str, ...] | None = LOCAL_HOSTS,
) -> Flask:
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
        return {
            "item": None if item is None else shown(item, detokenize),
            "progress": annotate.progress(engine, scan["id"], params_id, tagger_id),
        }

    @app.before_request
    def guard():
        request.host  # noqa: B018 (checked against TRUSTED_HOSTS: a 400 for any other name)
        if token is not None and not (
            _same(request.cookies.get("annotate_token", ""), token) or _same(request.args.get("token", ""), token)
        ):
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
        body = render_template(
            "annotate.html",
            nonce=nonce,
            csrf=csrf,
            annotator=annotate.tagger_name(annotator),
            scan=scan["name"],
            undo_key=UNDO_KEY,
            upos_buttons=[(n, KEYS[n]) for n in UPOS_NAMES if n in KEYS],
            special_buttons=[(status, title, key) for status, (title, key) in SPECIAL.items()],
        )
        response = make_response(body)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; "
            "style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'"
        )
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
        if (
            not isinstance(item_id, int)
            or isinstance(item_id, bool)
            or not 1 <= item_id <= ITEM_ID_MAX
            or not (label in SPECIAL or label in KEYS)
        ):
            abort(400)  # a malformed request is the client's error, never a 500
        try:
            annotate.answer(
                engine,
                item_id,
                tagger_id,
                UPOS_IDS.get(label) if label in KEYS else None,
                "ok" if label in KEYS else label,
                owner=owner,
            )
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


def shown(item: annotate.Item, detokenize) -> dict:
    """The item as the page shows it: the text before the target, the target, the text after it,
    and where the continuation starts (the model's words, shown apart from the prefix)."""
    from .label import target_span

    if detokenize is not None:
        full, span = target_span(detokenize, item.prefix_token_ids, item.token_ids)
        if span is not None:  # the target is the prefix's last token: the continuation starts where it ends
            return {
                "id": item.id,
                "prefix": full[: span[0]],
                "target": full[span[0] : span[1]],
                "continuation": full[span[1] :],
            }
    target = item.target_token.strip()  # no tokenizer here: the stored texts, glued with a space
    head = item.prefix_text[: len(item.prefix_text) - len(item.target_token.lstrip())] if target else item.prefix_text
    return {"id": item.id, "prefix": head, "target": target, "continuation": " " + item.text}


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


def run_annotate(
    engine,
    annotator: str,
    scan_name: str | None = None,
    params_id: int | None = None,
    sample: int = 300,
    overlap: float = 0.0,
    seed: int = 0,
    at_random: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    ready=None,
) -> None:
    """Serve the labelling page until Ctrl-C. Every input (the name, the token, the address, the
    port, the scan) is checked before anything is written; then the queue is built (or grown),
    the annotator registered, and `ready(url, total, scan)` called once the server listens. On the
    way out the annotator's leases are released: every answer given is already stored."""
    from werkzeug.serving import make_server

    from . import db
    from .label import detokenizer
    from .queue import new_worker_id
    from .scan_store import pick_params, pick_scan

    annotate.tagger_name(annotator)
    check_token(token)
    loopback = check_address(host, port, token)
    with db.read(engine) as conn:
        scan = pick_scan(conn, scan_name)
        params = pick_params(conn, scan["id"], params_id)
    total = annotate.build_queue(engine, scan["id"], params["id"], sample, overlap / 100, seed, at_random)
    tagger_id = annotate.register_annotator(engine, annotator)
    owner = new_worker_id()
    detokenize = detokenizer(params["model"])
    if detokenize is None:
        log.warning(
            "the tokenizer of %s is not here: completions are shown as stored, without the exact span", params["model"]
        )
    app = create_app(
        engine, scan, params["id"], tagger_id, annotator, owner, detokenize, token, allowed_hosts(host, loopback)
    )
    server = make_server(host, port, app, threaded=True)  # listening from here: the URL is good when given
    if ready is not None:
        ready(f"http://{host}:{port}/" + (f"?token={token}" if token else ""), total, scan)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        annotate.release(engine, tagger_id, owner)


def check_address(host: str, port: int, token: str | None) -> bool:
    """The page may listen at host:port (beyond the loopback only with a token). -> is it the loopback"""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        raise ConfigError(f"--host {host!r} is not an address to listen on") from None
    if not loopback and not token:
        raise ConfigError(f"listening on {host} exposes the page beyond this machine: pass --token SECRET too")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port") from None
    return loopback
