"""UD data: label ids, dataset sources (CoNLL-U file, UD directory, HF parquet or hub), alignment.

Every source yields the same `Sentence` objects: multiword-token rows and empty nodes are dropped,
labels are ids in the Hugging Face `universal_dependencies` ClassLabel order.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import DatasetError

# The HF `universal_dependencies` ClassLabel order; probes store these integer ids as classes_.
UPOS_NAMES = (
    "NOUN",
    "PUNCT",
    "ADP",
    "NUM",
    "SYM",
    "SCONJ",
    "ADJ",
    "PART",
    "DET",
    "CCONJ",
    "PROPN",
    "PRON",
    "X",
    "_",
    "ADV",
    "INTJ",
    "VERB",
    "AUX",
)
UPOS_IDS = {name: i for i, name in enumerate(UPOS_NAMES)}
K = len(UPOS_NAMES)  # the number of UPOS classes: every distribution here is over all K, in HF order
HF_DATASET_ID = "universal-dependencies/universal_dependencies"
HF_LEGACY_ID = "universal_dependencies"  # script dataset, loads only with datasets < 4
SPLIT_FILE_SUFFIX = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}


@dataclass(frozen=True)
class Sentence:
    idx: int  # position in the split, 0-based: the `dataset_idx` stored with candidates
    sent_id: str
    text: str
    words: tuple[tuple[str, int], ...]  # (form, UPOS id) of each syntactic word, in order


@dataclass(frozen=True)
class TokenizedSentence:
    input_ids: list[int]  # BOS first
    offsets: list[tuple[int, int]]
    labels: list[int | None]  # None: BOS, whitespace-only, or covers no labelled character


def label_id(name: str) -> int:
    try:
        return UPOS_IDS[name]
    except KeyError:
        raise DatasetError(f"unknown UPOS tag {name!r}; expected one of {', '.join(UPOS_NAMES)}") from None


def parse_label_list(spec: str | Sequence[str]) -> tuple[int, ...]:
    """'_,SYM,INTJ' (names or ids) -> unique label ids, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    ids: dict[int, None] = {}
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        ids[int(item) if item.isdigit() and int(item) < len(UPOS_NAMES) else label_id(item)] = None
    return tuple(ids)


# --- sources ---------------------------------------------------------------------------------


def load_sentences(source: str, split: str | None = "validation") -> list[Sentence]:
    """Read a split from a .conllu file, a UD directory, a parquet file/dir, or a HF dataset id.

    A single file is one split: `split` must still be a known name (it is stored and keys the
    sample noise), and one the file's UD name (`*-ud-dev.conllu`) does not contradict; None skips
    the check (a caller that holds out part of the file itself)."""
    if os.path.isdir(source):
        parquet = _find_parquet(source, split)
        return read_parquet(parquet) if parquet else read_conllu(_find_conllu(source, split))
    if os.path.isfile(source):
        if split is not None:
            check_file_split(source, split)
        if source.endswith(".parquet"):
            return read_parquet([source])
        return read_conllu(source)
    if source.partition(":")[0] in (HF_DATASET_ID, HF_LEGACY_ID):
        return read_hf_hub(source, split)
    raise DatasetError(f"dataset not found: {source} (a .conllu file, a UD directory or {HF_DATASET_ID}:en_ewt)")


def check_file_split(path: str, split: str) -> None:
    if split not in SPLIT_FILE_SUFFIX:
        raise DatasetError(f"unknown split {split!r}; use train, validation or test")
    named = re.search(r"-ud-(train|dev|test)\.conllu$", os.path.basename(path))
    if named and named.group(1) != SPLIT_FILE_SUFFIX[split]:
        raise DatasetError(
            f"{path} is the {named.group(1)} file of its treebank, not split {split!r}: "
            "pass the matching --split, or the treebank's folder"
        )


def _find_conllu(directory: str, split: str) -> str:
    suffix = SPLIT_FILE_SUFFIX.get(split)
    if suffix is None:
        raise DatasetError(f"unknown split {split!r}; use train, validation or test")
    found = sorted(glob.glob(os.path.join(directory, f"*-ud-{suffix}.conllu")))
    if len(found) != 1:
        raise DatasetError(f"expected one *-ud-{suffix}.conllu in {directory}, found {len(found)}")
    return found[0]


def _find_parquet(directory: str, split: str) -> list[str] | None:
    found = sorted(glob.glob(os.path.join(directory, "**", f"{split}*.parquet"), recursive=True))
    if not found and split == "validation":
        found = sorted(glob.glob(os.path.join(directory, "**", "dev*.parquet"), recursive=True))
    return found or None


def read_conllu(path: str) -> list[Sentence]:
    import conllu

    try:
        with open(path, encoding="utf-8") as handle:
            lines = _CheckedLines(handle, path)
            sentences = [_sentence_from_tokenlist(i, tl) for i, tl in enumerate(conllu.parse_incr(lines))]
    except (UnicodeDecodeError, conllu.exceptions.ParseException, ValueError, KeyError) as exc:
        raise DatasetError(f"{path} is not CoNLL-U: {exc}") from None
    if not any(s.words for s in sentences):  # comments only, or multiword ranges without their words
        raise DatasetError(f"{path} holds no CoNLL-U words (sentences with numbered token lines)")
    return sentences


CONLLU_COLUMNS = 10


class _CheckedLines:
    """The lines of a CoNLL-U file, refusing a token line without exactly 10 tab-separated columns
    (the conllu parser pads or truncates such lines silently)."""

    def __init__(self, handle, path: str):
        self.handle, self.path = handle, path

    def read(self, *args):  # conllu.parse_incr checks that its input has one
        return self.handle.read(*args)

    def __iter__(self):
        for number, line in enumerate(self.handle, 1):
            if line.strip() and not line.startswith("#") and line.count("\t") != CONLLU_COLUMNS - 1:
                raise DatasetError(
                    f"{self.path}:{number} is not CoNLL-U: a token line has {CONLLU_COLUMNS} "
                    f"tab-separated columns, this one has {line.count(chr(9)) + 1}"
                )
            yield line


def _sentence_from_tokenlist(i: int, tokenlist) -> Sentence:
    words = []
    for token in tokenlist:
        if not isinstance(token["id"], int):  # multiword range (1-2) or empty node (10.1)
            continue
        upos = token["upos"]
        if upos is None or token["form"] is None:
            raise ValueError(f"sentence {i}: token {token['id']} has no form or UPOS")
        words.append((token["form"], label_id(upos)))
    text = tokenlist.metadata.get("text")
    if text is None:
        text = _text_from_tokens(tokenlist)
    sent_id = tokenlist.metadata.get("sent_id", str(i))
    return Sentence(idx=i, sent_id=sent_id, text=text, words=tuple(words))


def _text_from_tokens(tokenlist) -> str:
    """Rebuild `# text` from surface tokens and SpaceAfter=No when a file lacks it."""
    parts, skip_until = [], 0
    for token in tokenlist:
        tid = token["id"]
        if isinstance(tid, tuple) and tid[1] == ".":
            continue
        if isinstance(tid, tuple):
            skip_until = tid[2]
        elif tid <= skip_until:
            continue
        misc = token["misc"] or {}
        parts.append(token["form"] + ("" if misc.get("SpaceAfter") == "No" else " "))
    return "".join(parts).strip()


def read_parquet(paths: list[str]) -> list[Sentence]:
    """Rows in the HF `universal_dependencies` schema (text, tokens, upos ids, head)."""
    try:
        import pyarrow.parquet as pq

        rows = [
            row
            for path in paths
            for row in pq.read_table(path, columns=["idx", "text", "tokens", "upos", "head"]).to_pylist()
        ]
    except (OSError, ValueError, KeyError) as exc:  # pyarrow raises ArrowInvalid (a ValueError)
        raise DatasetError(f"cannot read parquet {paths[0]}: {exc}") from None
    return [_sentence_from_hf_row(i, row) for i, row in enumerate(rows)]


def read_hf_hub(source: str, split: str) -> list[Sentence]:
    """Load from the HF hub (needs network or a warm cache). `ID[:config]`, config en_ewt by default."""
    import datasets

    name, _, config = source.partition(":")
    config = config or "en_ewt"
    try:
        if name == HF_LEGACY_ID:
            ds = datasets.load_dataset(HF_LEGACY_ID, config, split=split)
        else:
            ds = datasets.load_dataset(name, config, split=split, revision="refs/convert/parquet")
    except Exception as exc:  # datasets raises many unrelated types for a missing/offline dataset
        raise DatasetError(f"cannot load {name} {config} {split}: {exc}".splitlines()[0]) from None
    return [_sentence_from_hf_row(i, row) for i, row in enumerate(ds)]


def _sentence_from_hf_row(i: int, row: dict) -> Sentence:
    # The HF copy keeps multiword rows (UPOS `_`, head "None") and empty nodes (head "_");
    # a syntactic word is exactly a row whose head is a number.
    words = tuple(
        (form, int(upos))
        for form, upos, head in zip(row["tokens"], row["upos"], row["head"])
        if str(head).isdigit() and int(upos) != UPOS_IDS["_"]
    )
    return Sentence(idx=i, sent_id=str(row.get("idx", i)), text=row["text"], words=words)


# --- alignment -------------------------------------------------------------------------------


def word_spans(text: str, words: Sequence[tuple[str, int]]) -> list[tuple[int, int] | None]:
    """Each UD word's character span in `text` (first to last matched character, end exclusive),
    by the same walk as char_labels; None for a word none of whose characters was found."""
    spans: list[tuple[int, int] | None] = []
    pos = 0
    for form, _label in words:
        first = last = None
        for ch in form:
            found = text.find(ch, pos)
            if found < 0:
                continue
            first = found if first is None else first
            last, pos = found, found + 1
        spans.append(None if first is None else (first, last + 1))
    return spans


def char_labels(text: str, words: Sequence[tuple[str, int]]) -> list[int | None]:
    """Label each character of `text` with the UD word that covers it; spaces stay None.

    Walks the text matching each word's characters in order, skipping characters that do not match.
    A word character that cannot be found later in the text is skipped instead of eating the text.
    """
    labels: list[int | None] = [None] * len(text)
    pos = 0
    for form, label in words:
        for ch in form:
            found = text.find(ch, pos)
            if found < 0:
                continue
            labels[found] = label
            pos = found + 1
    return labels


def tokenize_with_labels(tokenizer, sentence: Sentence) -> TokenizedSentence:
    """Tokenize `# text` with BOS and offsets; each token takes its first labelled character's label."""
    enc = tokenizer(sentence.text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not ids or ids[0] != tokenizer.bos_token_id:
        raise DatasetError("the tokenizer does not add a BOS token; prefixes must start with BOS")
    chars = char_labels(sentence.text, sentence.words)
    labels: list[int | None] = [None]
    for start, end in offsets[1:]:
        labels.append(next((chars[i] for i in range(start, end) if chars[i] is not None), None))
    return TokenizedSentence(input_ids=ids, offsets=offsets, labels=labels)
