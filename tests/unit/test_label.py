"""The label stage's pieces: target span arithmetic on hand-made token pieces, the tagger interface
on a tiny spaCy tagger trained in the session, and its bad-input errors."""

import pytest

from posresample.errors import TaggerError
from posresample.label import target_span
from posresample.tagger import TagResult, load_tagger

# a SentencePiece-like vocabulary: "▁" is a space; BOS 2 and EOS 1 are special (skipped by decode)
PIECES = {
    1: "<eos>",
    2: "<bos>",
    10: "▁The",
    11: "▁band",
    12: "▁lead",
    13: "ing",
    14: "▁the",
    15: "▁way",
    16: ".",
    17: "▁run",
    18: "▁",
    19: "I",
}


def decode(ids):
    """Like a Metaspace decoder with prepend_scheme=first: the text's first space is dropped."""
    text = "".join(PIECES[i] for i in ids if i not in (1, 2)).replace("▁", " ")
    return text[1:] if text.startswith(" ") else text


@pytest.mark.parametrize(
    "prefix,completion,text,word",
    [
        ([2, 19], [17], "I run", "I"),  # BOS, target first in the text, no leading space
        ([2, 10, 11], [14, 15], "The band the way", "band"),  # leading space left out of the span
        ([2, 10, 12], [13, 14, 15], "The leading the way", "lead"),  # the continuation extends the target
        ([2, 10, 17], [16, 14], "The run. the", "run"),  # a completion that starts with punctuation
        ([2, 10, 17], [], "The run", "run"),  # an empty completion
        ([2, 10, 17], [1], "The run", "run"),  # EOS only
    ],
)
def test_target_span_arithmetic(prefix, completion, text, word):
    full, span = target_span(decode, prefix, completion)
    assert full == text and full[span[0] : span[1]] == word


def test_a_whitespace_target_gives_an_empty_span():
    full, span = target_span(decode, [2, 10, 18], [17])
    assert span is not None and span[0] == span[1]  # the tagger turns this into status "empty"


@pytest.fixture(scope="module")
def tagger(tiny_tagger):
    return load_tagger(f"spacy:{tiny_tagger}")


def test_tagger_reads_the_token_covering_the_span(tagger):
    texts = ["The leading the way", "I like the book you gave me .", "The run   was long", "Short"]
    spans = [(4, 8), (2, 6), (7, 9), (3, 9)]
    leading, like, spaces, beyond = tagger.tag(texts, spans)
    assert leading.status == "ok" and leading.word == "leading"  # expand: the whole word
    assert like.status == "ok" and like.word == "like" and like.upos_name in ("VERB", "AUX", "ADP", "NOUN")
    assert spaces == TagResult("empty")  # whitespace is not a word, whatever the model would say
    assert beyond.status == "no_span"  # no tagger token at those offsets


def test_tagger_identity_names_its_files_and_accuracy(tagger, tiny_tagger):
    identity = tagger.identity()
    assert identity["name"] == "sample-tagger" and identity["library"] == "spacy"
    assert len(identity["files_sha256"]) == 64 and identity["package_version"] is None
    assert set(identity["accuracy"]["dev"]) == {"gold_tokens", "raw_text", "words", "unlabelled"}
    counts = identity["confusion"]["counts"]  # train-tagger's held-out confusion, true -> tagger's
    words = identity["accuracy"]["dev"]["words"] - identity["accuracy"]["dev"]["unlabelled"]
    assert sum(sum(row.values()) for row in counts.values()) == words
    right = sum(row.get(true, 0) for true, row in counts.items())
    assert right == round(identity["accuracy"]["dev"]["raw_text"] * identity["accuracy"]["dev"]["words"])


def test_bad_tagger_specs_are_refused(tmp_path):
    import spacy

    with pytest.raises(TaggerError, match="unknown tagger backend 'nltk'"):
        load_tagger("nltk:x")
    with pytest.raises(TaggerError, match="is not BACKEND:TARGET"):
        load_tagger("taggers/ewt")
    (tmp_path / "notapipeline").mkdir()
    (tmp_path / "notapipeline" / "x.txt").write_text("hello")
    with pytest.raises(TaggerError, match="folder is not a spaCy pipeline"):
        load_tagger(f"spacy:{tmp_path / 'notapipeline'}")
    with pytest.raises(TaggerError, match="no such folder or installed spaCy package"):
        load_tagger("spacy:en_no_such_pipeline_sm")
    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(TaggerError, match="does not assign UPOS tags"):
        load_tagger(f"spacy:{tmp_path / 'blank'}")


def test_train_tagger_on_one_file_holds_out_a_tenth(tiny_tagger):
    import json

    meta = json.loads(open(tiny_tagger + ".json").read())
    assert "every 10th sentence, held out" in meta["sources"]["dev"]
    assert meta["train_sentences"] == 21 and 0 <= meta["accuracy"]["dev"]["raw_text"] <= 1
