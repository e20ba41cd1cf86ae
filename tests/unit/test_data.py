"""Alignment and dataset sources on hand-made sentences (no model, no shared data)."""

import pytest

from posresample.data import (
    UPOS_IDS,
    UPOS_NAMES,
    Sentence,
    char_labels,
    load_sentences,
    parse_label_list,
    read_conllu,
    read_parquet,
    tokenize_with_labels,
)
from posresample.errors import DatasetError

L = UPOS_IDS

CONLLU = """# sent_id = s1
# text = I don't know.
1	I	I	PRON	PRP	_	4	nsubj	_	_
2-3	don't	_	_	_	_	_	_	_	_
2	do	do	AUX	VBP	_	4	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	know	know	VERB	VB	_	0	root	_	SpaceAfter=No
5	.	.	PUNCT	.	_	4	punct	_	_

# sent_id = s2
# text = He ate, she too.
1	He	he	PRON	PRP	_	2	nsubj	_	_
2	ate	eat	VERB	VBD	_	0	root	_	SpaceAfter=No
3	,	,	PUNCT	,	_	4	punct	_	_
4	she	she	PRON	PRP	_	2	conj	_	_
4.1	ate	eat	VERB	VBD	_	_	_	2:conj	CopyOf=2
5	too	too	ADV	RB	_	4	advmod	_	SpaceAfter=No
6	.	.	PUNCT	.	_	2	punct	_	_

"""


def wordlevel_tokenizer(vocab_words):
    """A Gemma-like fast tokenizer (▁ for spaces, BOS added, offsets) over a fixed vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *vocab_words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"), pre_tokenizers.Punctuation("isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture
def conllu_file(tmp_path):
    path = tmp_path / "x-ud-dev.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    return path


def test_multiword_rows_and_empty_nodes_are_dropped(conllu_file):
    s1, s2 = read_conllu(str(conllu_file))
    assert s1.words == (("I", L["PRON"]), ("do", L["AUX"]), ("n't", L["PART"]), ("know", L["VERB"]), (".", L["PUNCT"]))
    assert [w for w, _ in s2.words] == ["He", "ate", ",", "she", "too", "."]  # no empty node 4.1
    assert (s1.idx, s1.sent_id, s1.text) == (0, "s1", "I don't know.")


def test_char_labels_skip_spaces_and_follow_words():
    labels = char_labels("I don't know.", [("I", 11), ("do", 17), ("n't", 7), ("know", 16), (".", 1)])
    assert labels == [11, None, 17, 17, 7, 7, 7, None, 16, 16, 16, 16, 1]


def test_char_labels_survive_a_form_character_missing_from_text():
    # A normalised form ("Ok" for "OK") must not eat the rest of the sentence.
    labels = char_labels("OK go", [("Ok", 14), ("go", 16)])
    assert labels == [14, None, None, 16, 16]


def test_tokens_take_the_first_labelled_character_and_bos_gets_none():
    tok = wordlevel_tokenizer(["▁I", "▁don", "'", "t", "▁know", ".", "▁"])
    sentence = Sentence(0, "s", "I don't  know.", (("I", 11), ("do", 17), ("n't", 7), ("know", 16), (".", 1)))
    enc = tokenize_with_labels(tok, sentence)
    pieces = tok.convert_ids_to_tokens(enc.input_ids)
    assert pieces == ["<bos>", "▁I", "▁don", "'", "t", "▁", "▁know", "."]
    # "▁don" covers " don": its first labelled character is the d of "do" (AUX), although it also
    # covers the n of "n't"; the sub-tokens "'" and "t" carry "n't"'s PART; the lone "▁" is unlabelled.
    assert enc.labels == [None, 11, 17, 7, 7, None, 16, 1]
    assert enc.offsets[0] == (0, 0)


def test_tokenizer_without_bos_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<unk>")
    with pytest.raises(DatasetError, match="BOS"):
        tokenize_with_labels(tok, Sentence(0, "s", "a", (("a", 0),)))


def test_ud_directory_maps_validation_to_dev(tmp_path, conllu_file):
    assert [s.sent_id for s in load_sentences(str(tmp_path), "validation")] == ["s1", "s2"]
    with pytest.raises(DatasetError, match="train"):
        load_sentences(str(tmp_path), "train")


@pytest.mark.parametrize("content", ["not conllu at all\n", "1\tword\n", "\x00\xff"])
def test_not_conllu_is_a_dataset_error(tmp_path, content):
    path = tmp_path / "bad.conllu"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(DatasetError):
        read_conllu(str(path))


def test_missing_dataset_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_sentences(str(tmp_path / "nope.conllu"))


def test_hf_parquet_rows_give_the_same_sentences_as_conllu(tmp_path, conllu_file):
    """The HF copy keeps multiword rows (UPOS `_`, head None) and empty nodes; both are dropped."""
    import conllu
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for tl in conllu.parse_incr(open(conllu_file, encoding="utf-8")):
        rows.append(
            {
                "idx": tl.metadata["sent_id"],
                "text": tl.metadata["text"],
                "tokens": [t["form"] for t in tl],
                "upos": [UPOS_IDS[t["upos"] or "_"] for t in tl],
                "head": [
                    str(t["head"])
                    if t["head"] is not None
                    else ("None" if "-" in str(t["id"]) or isinstance(t["id"], tuple) and t["id"][1] == "-" else "_")
                    for t in tl
                ],
            }
        )
    path = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from_parquet = read_parquet([str(path)])
    from_conllu = read_conllu(str(conllu_file))
    assert [(s.sent_id, s.text, s.words) for s in from_parquet] == [(s.sent_id, s.text, s.words) for s in from_conllu]
    assert [s.words for s in load_sentences(str(path))] == [s.words for s in from_conllu]


def test_parse_label_list_accepts_names_and_ids():
    assert parse_label_list("_,SYM,INTJ") == (13, 4, 15)  # the user's order, kept for the export header
    assert parse_label_list("4, NOUN, SYM") == (4, 0)
    assert UPOS_NAMES[13] == "_"
    with pytest.raises(DatasetError, match="unknown UPOS"):
        parse_label_list("NOUNS")


def test_text_is_rebuilt_from_forms_when_a_file_has_no_text_line(tmp_path):
    path = tmp_path / "notext.conllu"
    lines = [line for line in CONLLU.split("\n\n")[0].splitlines() if not line.startswith("# text")]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    [sentence] = read_conllu(str(path))
    assert sentence.text == "I don't know."  # the multiword surface form, SpaceAfter=No honoured
