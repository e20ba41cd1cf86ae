"""Taggers: the UPOS of the word at a character span, for many texts. One small interface.

`tag(texts, spans) -> [TagResult]` is all the label stage needs; a backend is a class with that
method and an `identity()`. spaCy is the first: a folder trained by `train-tagger`, or an
installed pipeline package (`spacy:en_core_web_trf`, as the original study used).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Protocol

from .data import UPOS_IDS
from .errors import TaggerError

SPACY_ALIASES = {"CONJ": "CCONJ"}  # spaCy's v2 name for the same tag
CHECK_TEXT = "The old man saw two big dogs near the house and he quickly ran home ."
PIPE_BATCH = 256  # texts per nlp.pipe batch


@dataclass(frozen=True)
class TagResult:
    status: str  # ok | no_span (no tagger token at the span) | empty (whitespace) | not_upos
    upos: int | None = None  # HF ClassLabel id
    upos_name: str | None = None
    tag: str | None = None  # the fine tag (PTB for English pipelines), when there is one
    word: str | None = None  # the tagger's token covering the span


class Tagger(Protocol):
    name: str

    def identity(self) -> dict: ...

    def tag(self, texts: list[str], spans: list[tuple[int, int]], progress: bool = False) -> list[TagResult]: ...


def load_tagger(spec: str, name: str | None = None) -> Tagger:
    """`spacy:PATH_OR_PACKAGE` -> a tagger; anything else is refused in one line."""
    backend, sep, target = spec.partition(":")
    if not sep or not target:
        raise TaggerError(f"tagger spec {spec!r} is not BACKEND:TARGET: use spacy:PATH_OR_PACKAGE")
    if backend == "spacy":
        return SpacyTagger(spec, target, name)
    raise TaggerError(f"unknown tagger backend {backend!r} in {spec!r}: use spacy:PATH_OR_PACKAGE")


def sidecar_path(folder: str) -> str:
    return os.path.normpath(folder) + ".json"


def read_sidecar(folder: str) -> dict:
    """train-tagger's sidecar JSON beside the folder ({} when there is none); a malformed one is refused."""
    from .jsonfile import read_json

    path = sidecar_path(folder)
    if not os.path.isfile(path):
        return {}
    meta = read_json(path, "tagger sidecar", TaggerError)
    if not isinstance(meta, dict):
        raise TaggerError(f"tagger sidecar {path} is not a JSON object")
    return meta


def files_sha256(folder: str) -> str:
    """sha256 over a folder's files (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class SpacyTagger:
    """A spaCy pipeline that assigns `pos_` (a morphologizer, or a tagger with an attribute_ruler)."""

    def __init__(self, spec: str, target: str, name: str | None = None, batch_size: int = PIPE_BATCH):
        import spacy

        self.spec, self.target, self.batch_size = spec, target, batch_size
        self.is_folder = os.path.isdir(target)
        try:
            nlp = spacy.load(target)
        except (OSError, ValueError, KeyError) as exc:
            what = "folder is not a spaCy pipeline" if self.is_folder else "no such folder or installed spaCy package"
            raise TaggerError(f"cannot load tagger {spec}: {what} ({str(exc).splitlines()[0][:200]})") from None
        keep = {"tok2vec", "transformer", "morphologizer", "tagger", "attribute_ruler"}
        self.nlp = (
            spacy.load(target, exclude=[p for p in nlp.pipe_names if p not in keep])
            if set(nlp.pipe_names) - keep
            else nlp
        )
        self.name = name or (os.path.basename(os.path.normpath(target)) if self.is_folder else target)
        self._check_upos()

    def _check_upos(self) -> None:
        doc = self.nlp(CHECK_TEXT)
        tags = {SPACY_ALIASES.get(t.pos_, t.pos_) for t in doc if not t.is_space}
        if not tags or not tags <= set(UPOS_IDS):
            raise TaggerError(
                f"tagger {self.spec} does not assign UPOS tags (pos_ gave {sorted(tags)[:6]}): "
                "train it with a morphologizer, or add an attribute_ruler that maps tags to UPOS"
            )

    def identity(self) -> dict:
        import spacy

        sidecar = read_sidecar(self.target) if self.is_folder else {}
        meta = self.nlp.meta
        return {
            "name": self.name,
            "spec": self.spec,
            "library": "spacy",
            "library_version": spacy.__version__,
            "files_sha256": files_sha256(self.target) if self.is_folder else None,
            "package_version": None if self.is_folder else f"{meta.get('name')}-{meta.get('version')}",
            "accuracy": sidecar.get("accuracy"),
            "confusion": sidecar.get("confusion"),
        }

    def tag(self, texts: list[str], spans: list[tuple[int, int]], progress: bool = False) -> list[TagResult]:
        """Tag each distinct text once (nlp.pipe), then read the token at each span; `progress`: a bar
        over the distinct texts (a transformer pipeline on the CPU takes minutes over a treebank)."""
        from tqdm import tqdm

        distinct = list(dict.fromkeys(texts))
        piped = tqdm(
            self.nlp.pipe(distinct, batch_size=self.batch_size),
            total=len(distinct),
            desc="tag",
            unit="text",
            disable=not progress,
        )
        docs = dict(zip(distinct, piped))
        return [token_at(docs[text], start, end) for text, (start, end) in zip(texts, spans)]


def token_at(doc, start: int, end: int) -> TagResult:
    """The tagger token covering [start, end) (alignment "expand"); its first token if several."""
    if start < 0 or end > len(doc.text):
        return TagResult("no_span")
    if start >= end or not doc.text[start:end].strip():
        return TagResult("empty")
    span = doc.char_span(start, end, alignment_mode="expand")
    if span is None or len(span) == 0:
        return TagResult("no_span")
    token = next((t for t in span if not t.is_space), None)
    if token is None:
        return TagResult("empty", word=span.text)
    pos = SPACY_ALIASES.get(token.pos_, token.pos_)
    if pos == "SPACE" or not token.text.strip():
        return TagResult("empty", word=token.text)
    if pos not in UPOS_IDS:
        return TagResult("not_upos", tag=token.tag_ or None, word=token.text)
    return TagResult("ok", UPOS_IDS[pos], pos, token.tag_ or None, token.text)
