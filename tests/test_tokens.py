"""Token sets for the concept lens: selection, word pooling, label sets, CoNLL-U UPOS, triggers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_topo.representations.tokens import (
    build_token_set,
    concept_triggers_on_ids,
    conllu_upos,
    token_activations,
    token_labels,
    trigger_words,
    word_casing,
    word_suffix,
)

GOOD = ["good", "great", "fine"]
BAD = ["bad", "awful", "dull"]
FILLER = ["the", "film", "was", "it", "and", "a", "plot", "story"]
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *GOOD,
    *BAD,
    *FILLER,
    "run",
    "##ning",
    "'",
    "s",
    ".",
    ",",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from lightning_topo.models.embedded import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(None))


def test_words_are_pooled_to_their_last_piece(minilm_tokenizer):
    texts = ["Illuminating if overly talky documentary.", "It's 1990s cinema, Running!"]
    ts = build_token_set(texts, [1, 0], minilm_tokenizer, max_tokens=100, max_per_word=None, seed=0)
    assert sorted(ts.texts) == sorted(texts)
    i = ts.texts.index(texts[0])
    words = [w for w, s in zip(ts.words, ts.sentence.tolist(), strict=True) if s == i]
    assert words == ["Illuminating", "if", "overly", "talky", "documentary", "."]
    for t in range(ts.n_tokens):
        pieces = minilm_tokenizer.convert_ids_to_tokens(ts.input_ids[ts.sentence[t]])
        nxt = pieces[ts.piece[t] + 1]
        assert not nxt.startswith("##")  # the piece after a word's last piece starts a new word
        start, end = ts.spans[t]
        assert ts.texts[ts.sentence[t]][start:end] == ts.words[t]
    assert ["It", "'", "s"] == [w for w, s in zip(ts.words, ts.sentence.tolist(), strict=True) if s == 1 - i][
        :3
    ]
    assert ts.token_classes.tolist() == [int(ts.classes[s]) for s in ts.sentence.tolist()]


def test_token_set_is_seeded_capped_and_limits_frequent_words(tokenizer):
    texts = [f"the film was {g} and the plot was {b}" for g in GOOD for b in BAD] * 3
    labels = [i % 2 for i in range(len(texts))]
    a = build_token_set(texts, labels, tokenizer, max_tokens=40, max_per_word=4, seed=1)
    b = build_token_set(texts, labels, tokenizer, max_tokens=40, max_per_word=4, seed=1)
    c = build_token_set(texts, labels, tokenizer, max_tokens=40, max_per_word=4, seed=2)
    assert a.fingerprint == b.fingerprint and a.rows == b.rows
    assert a.rows != c.rows
    assert a.n_tokens == 40
    counts = {w: [x.lower() for x in a.words].count(w) for w in set(a.words)}
    assert max(counts.values()) == 4
    small = build_token_set(texts, labels, tokenizer, max_tokens=5, max_per_word=None, seed=1)
    assert small.n_tokens == 5 and len(small.texts) == 1


def test_token_activations_match_single_sentence_forward(tokenizer, tiny_config):
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_config.__class__(**{**tiny_config.to_dict(), "vocab_size": len(VOCAB)})).train()
    texts = ["the film was running", "good plot", "it was awful and dull , the story was bad ."]
    ts = build_token_set(texts, [1, 1, 0], tokenizer, max_tokens=50, max_per_word=None)
    acts = token_activations(model, ts, layers=[0, -1], batch_size=2)
    assert model.training  # mode restored
    assert set(acts) == {0, -1} and acts[-1].shape == (ts.n_tokens, tiny_config.hidden_size)
    model.eval()
    for t in range(ts.n_tokens):
        ids = torch.tensor([ts.input_ids[ts.sentence[t]]])
        with torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, ts.piece[t]]
        assert torch.allclose(acts[-1][t], ref, atol=1e-5)
    with pytest.raises(IndexError, match="layer 7"):
        token_activations(model, ts, layers=[7])


def test_offline_label_sets(tokenizer):
    assert word_suffix("running") == "ing" and word_suffix("nationalism") == "ism"
    assert word_suffix("sing") is None and word_suffix("it's") is None and word_suffix("films") == "s"
    assert [word_casing(w) for w in ["the", "THE", "The", "iPhone", "I", "42"]] == [
        "lower", "upper", "title", "mixed", "upper", None,
    ]  # fmt: skip
    ts = build_token_set(["The film , 1990s and 35 films ."], [1], tokenizer, max_per_word=None)
    assert ts.words == ["The", "film", ",", "1990s", "and", "35", "films", "."]
    assert token_labels(ts, "lexical")[0] == "the"
    assert token_labels(ts, "punctuation") == [
        None,
        None,
        "punctuation",
        None,
        None,
        None,
        None,
        "punctuation",
    ]
    assert token_labels(ts, "number") == [None, None, None, "number", None, "number", None, None]
    assert token_labels(ts, "class") == [1] * 8
    assert token_labels(ts, "suffix")[6] == "s"
    with pytest.raises(ValueError, match="label_set"):
        token_labels(ts, "sentiment")
    with pytest.raises(ValueError, match="conllu_file"):
        token_labels(ts, "upos")


CONLLU = """# text = it's a good film.
1\tit\tit\tPRON\t_\t_\t0\t_\t_\t_
2\t's\tbe\tAUX\t_\t_\t0\t_\t_\t_
3\ta\ta\tDET\t_\t_\t0\t_\t_\t_
4\tgood\tgood\tADJ\t_\t_\t0\t_\t_\t_
5\tfilm\tfilm\tNOUN\t_\t_\t0\t_\t_\t_
6\t.\t.\tPUNCT\t_\t_\t0\t_\t_\t_

# text = dont
1-2\tdont\t_\t_\t_\t_\t_\t_\t_\t_
1\tdo\tdo\tAUX\t_\t_\t0\t_\t_\t_
2\tnt\tnot\tPART\t_\t_\t0\t_\t_\t_

"""


def test_conllu_upos_aligns_by_characters(tokenizer, tmp_path):
    path = tmp_path / "val.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    texts = ["it's a good film.", "the plot was dull", "dont"]
    ts = build_token_set(texts, [1, 0, 1], tokenizer, max_per_word=None)
    upos = dict(zip(zip(ts.sentence.tolist(), ts.words, strict=True), conllu_upos(ts, path), strict=True))
    s0, s1, s2 = (ts.texts.index(t) for t in texts)
    assert upos[(s0, "it")] == "PRON" and upos[(s0, "good")] == "ADJ" and upos[(s0, ".")] == "PUNCT"
    assert upos[(s0, "'")] == "AUX" and upos[(s0, "s")] == "AUX"  # both inside the CoNLL-U token "'s"
    assert upos[(s1, "plot")] is None  # sentence not in the file
    assert upos[(s2, "dont")] == "AUX"  # multiword token: UPOS of its first word
    assert token_labels(ts, "upos", conllu_file=path) == conllu_upos(ts, path)


def test_conllu_word_crossing_a_token_boundary_gets_none(tokenizer, tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(
        "1\tthe\tthe\tDET\t_\t_\t0\t_\t_\t_\n2\tfi\tfi\tX\t_\t_\t0\t_\t_\t_\n3\tlm\tlm\tX\t_\t_\t0\t_\t_\t_\n\n"
    )
    ts = build_token_set(["the film"], [0], tokenizer)
    assert conllu_upos(ts, path) == ["DET", None]


def test_conllu_bad_inputs(tokenizer, tmp_path):
    ts = build_token_set(["the plot was dull"], [0], tokenizer)
    path = tmp_path / "other.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    with pytest.raises(ValueError, match="conllu_file .*none of its 2 sentences match"):
        conllu_upos(ts, path)
    with pytest.raises(FileNotFoundError, match="conllu_file"):
        conllu_upos(ts, tmp_path / "missing.conllu")


@pytest.mark.parametrize(
    ("texts", "labels", "kwargs", "error", "match"),
    [
        ([], [], {}, ValueError, "texts is empty"),
        (["  ", ""], [0, 1], {}, ValueError, "token set is empty"),
        (["good"], [0, 1], {}, ValueError, "labels has 2"),
        (["good"], [0], {"max_tokens": 1}, ValueError, "max_tokens"),
        (["good"], [0], {"max_per_word": 0}, ValueError, "max_per_word"),
    ],
)
def test_build_token_set_bad_inputs(tokenizer, texts, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_token_set(texts, labels, tokenizer, **kwargs)


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        build_token_set(["good"], [0], Slow())


class _LexiconModel(torch.nn.Module):
    """Predicts class 1 when a sentence has more GOOD than BAD words (a transparent classifier)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.good = torch.tensor(tokenizer.convert_tokens_to_ids(GOOD))
        self.bad = torch.tensor(tokenizer.convert_tokens_to_ids(BAD))
        self.dummy = torch.nn.Linear(1, 1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        pos = torch.isin(input_ids, self.good).sum(1).float()
        neg = torch.isin(input_ids, self.bad).sum(1).float()
        return SimpleNamespace(logits=torch.stack([neg + 0.5, pos], dim=1))


def test_triggers_flip_predictions_and_random_words_do_not(tokenizer):
    texts = ["the film was good", "a great plot", "it was bad", "the story was dull"] * 5
    labels = [1, 1, 0, 0] * 5
    ts = build_token_set(texts, labels, tokenizer, max_per_word=None)
    ids = torch.tensor([0 if w in BAD else 1 if w in GOOD else 2 for w in ts.words])
    words = trigger_words(ids, ts.words, ts.token_classes, num_classes=2, n_words=2)
    assert set(words[0]) <= set(BAD) and set(words[1]) <= set(GOOD)
    rows = [(tokenizer(t)["input_ids"], None) for t in texts]
    out = concept_triggers_on_ids(
        _LexiconModel(tokenizer), tokenizer, rows, labels, {0: ["bad", "awful"]}, FILLER, max_sentences=8
    )
    assert out["per_class"][0]["n"] == 8 and out["per_class"][0]["acc"] == 1.0
    assert out["trigger_drop"] == pytest.approx(1.0)
    assert out["random_drop"] == 0.0
    assert len(out["per_class"][0]["random_words"]) == 2
    with pytest.raises(ValueError, match="words is empty"):
        concept_triggers_on_ids(_LexiconModel(tokenizer), tokenizer, rows, labels, {}, FILLER)


# ----------------------------------------------------------------------- words from token ids alone
def test_sequence_words_read_back_the_text_words_of_both_segments(minilm_tokenizer):
    from lightning_topo.representations.tokens import sequence_words

    enc = minilm_tokenizer(["It's 1990s cinema, Running!"], ["A second part."])
    words, mismatched = sequence_words(minilm_tokenizer, enc["input_ids"])
    forms = [(w.form, w.segment) for w in words[0]]
    assert mismatched == 0
    assert forms == [("it", 0), ("'", 0), ("s", 0), ("1990s", 0), ("cinema", 0), (",", 0), ("running", 0),
                     ("!", 0), ("a", 1), ("second", 1), ("part", 1), (".", 1)]  # fmt: skip
    ids = enc["input_ids"][0]
    running = next(w for w in words[0] if w.form == "running")
    assert minilm_tokenizer.decode(ids[running.start : running.last + 1]).replace(" ", "") == "running"
    assert enc.word_ids(0)[running.last] != enc.word_ids(0)[running.last + 1]  # the word's last piece


def test_sequence_words_count_segments_that_do_not_round_trip(minilm_tokenizer):
    from lightning_topo.representations.tokens import sequence_words

    cls, sep = minilm_tokenizer.cls_token_id, minilm_tokenizer.sep_token_id
    cont = minilm_tokenizer.convert_tokens_to_ids("##ing")  # a continuation piece cannot start a text
    unk = minilm_tokenizer.unk_token_id
    words, mismatched = sequence_words(minilm_tokenizer, [[cls, cont, sep], [cls, unk, sep]])
    assert mismatched == 1 and len(words[0]) >= 1
    assert words[1] == []  # the unknown token's text is lost: no word


def test_select_tokens_streamed_and_pruned_equals_all_at_once():
    """The stream property: prune with keep_tail after each chunk, in any order, and get the same set."""
    from lightning_topo.representations.tokens import select_tokens

    g = torch.Generator().manual_seed(0)
    n_sent = 60
    keys = torch.rand(n_sent, generator=g, dtype=torch.float64)
    rows = [(keys[s].item(), p, int(torch.randint(0, 40, (1,), generator=g))) for s in range(n_sent) for p in range(7)]
    k, p, f = (torch.tensor([r[i] for r in rows]) for i in range(3))
    full = select_tokens(k.double(), p, f, max_tokens=90, max_per_word=4)
    assert int(full.sum()) == 90
    chosen_all = {rows[i][:2] for i in torch.nonzero(full).flatten().tolist()}
    for order in (torch.arange(len(rows)), torch.randperm(len(rows), generator=g)):
        kept: list[int] = []
        for chunk in order.split(37):
            kept += chunk.tolist()
            mask = select_tokens(k[kept].double(), p[kept], f[kept], 90, 4, keep_tail=True)
            kept = [kept[i] for i in torch.nonzero(mask).flatten().tolist()]
        final = select_tokens(k[kept].double(), p[kept], f[kept], 90, 4)
        assert {rows[kept[i]][:2] for i in torch.nonzero(final).flatten().tolist()} == chosen_all
    # the per-form cap and the visiting order: no form over 4, and sentences in key order
    chosen = torch.nonzero(full).flatten()
    assert torch.bincount(f[chosen]).max() <= 4
    last = max(rows[i][:2] for i in chosen.tolist())
    for i, (key, pos, form) in enumerate(rows):  # an earlier token left out has a full form
        if (key, pos) < last and not bool(full[i]):
            before = [j for j in chosen.tolist() if rows[j][2] == form and rows[j][:2] < (key, pos)]
            assert len(before) == 4
    # a (key, position) seen twice (a sentence on two processes) counts once
    twice = select_tokens(torch.cat([k, k]).double(), torch.cat([p, p]), torch.cat([f, f]), 90, 4)
    assert int(twice.sum()) == 90


def test_prepend_tokens_inserts_after_cls_and_keeps_the_last_token():
    from lightning_topo.representations.tokens import pad_rows, prepend_tokens

    batch = pad_rows([([2, 10, 11, 3], [0, 0, 0, 0]), ([2, 12, 3], [0, 0, 0])], pad_id=0)
    out = prepend_tokens(batch, [7, 8], max_length=5)
    assert out["input_ids"].tolist() == [[2, 7, 8, 10, 3], [2, 7, 8, 12, 3]]
    assert out["attention_mask"].tolist() == [[1] * 5, [1] * 5] and out["token_type_ids"].shape == (2, 5)
    wide = prepend_tokens(batch, [7], max_length=64)
    assert wide["input_ids"].tolist() == [[2, 7, 10, 11, 3], [2, 7, 12, 3, 0]]
    assert wide["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0]
