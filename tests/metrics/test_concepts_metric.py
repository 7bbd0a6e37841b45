"""ConceptAlignment driven the way analyze() drives a lens: check_model, make_capture, update_from, compute."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import save_tiny_hf_folder

GOOD = ["a good film", "great acting and a lovely story", "the plot is superb", "nice, warm and funny"]
BAD = ["a bad film", "awful acting and a dull story", "the plot is boring", "poor, cold and tedious"]


def _texts(n: int = 48):
    texts, labels = [], []
    for i in range(n):
        pool = GOOD if i % 2 else BAD
        texts.append(f"{pool[i % 4]} number {i}")
        labels.append(i % 2)
    return texts, labels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_hf_folder(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="module")
def model(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False).eval()


@pytest.fixture(scope="module")
def tokenizer(folder):
    from lightning_topo.loading import load_tokenizer

    return load_tokenizer(str(folder))


def _batches(tokenizer, batch_size=8, pairs=False, reverse=False, n=48):
    texts, labels = _texts(n)
    out = []
    for s in range(0, len(texts), batch_size):
        chunk = texts[s : s + batch_size]
        second = [f"second part {j}" for j in range(len(chunk))] if pairs else None
        enc = tokenizer(chunk, second, padding=True, return_tensors="pt")
        out.append({**dict(enc), "labels": torch.tensor(labels[s : s + batch_size])})
    return out[::-1] if reverse else out


def _run(metric, model, batches):
    """What analyze() does: the lens's own capture around the model, update_from per encoder call."""
    metric.check_model(model)
    capture = metric.make_capture(model)
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with capture, torch.no_grad():
            model(**inputs)
        for captured in capture.pop():
            metric.update_from(captured, batch["labels"])
    return metric.compute()


def _metric(**kwargs):
    from lightning_topo.metrics import ConceptAlignment

    kwargs.setdefault("layers", "all")
    kwargs.setdefault("max_tokens", 80)
    return ConceptAlignment(**kwargs)


def test_plain_loop_gives_every_name_and_real_words(model, tokenizer):
    from lightning_topo.metrics import ConceptAlignment, LensMetric

    assert issubclass(ConceptAlignment, LensMetric)
    metric = _metric()
    result = _run(metric, model, _batches(tokenizer))  # tokenizer found at the model's name_or_path
    names = set(result.metrics())
    assert result.headline_name() == "concepts/polar" and "concepts/polar" in names
    for layer in (0, 1, 2):
        assert {f"concepts/polar/layer_{layer}", f"concepts/polar_chance/layer_{layer}"} <= names
        assert {f"concepts/aligned/{s}/layer_{layer}" for s in ("lexical", "suffix", "punctuation", "number")} <= names
        assert f"concepts/matched/layer_{layer}" not in names  # no reference
    assert "concepts/aligned/casing/layer_0" not in names  # an uncased tokenizer: casing is left out
    assert result.values["polar"] == result.values["polar/layer_2"]
    assert all(0.0 <= v <= 1.0 for v in result.metrics().values())
    ex = result.extras
    assert ex["n_tokens"] == 80 and ex["n_concepts"] == 4 and len(ex["words"]) == 80
    vocabulary = {w for t in _texts()[0] for w in t.replace(",", " , ").split()}
    assert set(ex["words"]) <= vocabulary  # words read back from the ids are the text's words
    from collections import Counter

    assert max(Counter(w.lower() for w in ex["words"]).values()) <= 10  # max_per_word
    assert ex["mismatched"] == 0 and ex["ids"][2].shape == (80,)


def test_token_set_does_not_depend_on_batching_or_order(model, tokenizer):
    a = _run(_metric(), model, _batches(tokenizer, batch_size=8))
    b = _run(_metric(), model, _batches(tokenizer, batch_size=5, reverse=True))
    assert torch.equal(a.extras["keys"], b.extras["keys"]) and torch.equal(a.extras["positions"], b.extras["positions"])
    assert a.extras["words"] == b.extras["words"]
    for name, value in a.values.items():
        assert float(b.values[name]) == pytest.approx(float(value), abs=1e-6), name


def test_two_shards_merged_give_the_one_process_result(model, tokenizer):
    """What DDP's cat gather gives: each process prunes its own stream, the union selects the same set."""
    batches = _batches(tokenizer, batch_size=6)
    one = _run(_metric(), model, batches)
    shards = [_metric(), _metric()]
    for i, shard in enumerate(shards):
        shard.check_model(model)
        capture = shard.make_capture(model)
        for batch in batches[i::2]:
            with capture, torch.no_grad():
                model(**{k: v for k, v in batch.items() if k != "labels"})
            shard.update_from(capture.pop()[-1], batch["labels"])
    shards[0].merge_state(shards[1])
    merged = shards[0].compute()
    assert torch.equal(merged.extras["keys"], one.extras["keys"])
    assert merged.metrics() == pytest.approx(one.metrics())


def test_reference_of_the_same_model_matches_fully(model, tokenizer):
    ref = _run(_metric(), model, _batches(tokenizer))
    again = _run(_metric(reference=ref), model, _batches(tokenizer, batch_size=5))
    for layer in (0, 1, 2):
        assert float(again.values[f"matched/layer_{layer}"]) == 1.0
        assert float(again.values[f"matched_chance/layer_{layer}"]) < 1.0
    assert again.extras["missing"] == 0
    # only part of the data seen: the shares are measured on the reference tokens that were seen
    part = _run(_metric(reference=ref), model, _batches(tokenizer)[:3])
    assert 0 < part.extras["n_tokens"] < 80 and part.extras["missing"] == 80 - part.extras["n_tokens"]
    state = _metric(reference=ref).reference_state()
    assert _metric(reference=state).reference_state() == state


def test_sentence_pairs_read_both_segments(model, tokenizer):
    result = _run(_metric(max_per_word=None, max_tokens=400), model, _batches(tokenizer, pairs=True))
    segments = result.extras["segments"]
    assert set(segments.tolist()) == {0, 1}
    second = {w for w, s in zip(result.extras["words"], segments.tolist(), strict=True) if s == 1}
    assert second <= {"second", "part"} | {str(j) for j in range(8)}


def test_max_samples_caps_the_sequences_read(model, tokenizer):
    capped = _run(_metric(max_samples=8, max_tokens=1000, max_per_word=None), model, _batches(tokenizer))
    assert capped.extras["n_sentences"] == 8


def test_nan_hidden_states_give_nan_under_every_name(tokenizer):
    metric = _metric(tokenizer=tokenizer, layers=[0, 2])
    ids = tokenizer(_texts(16)[0], padding=True, return_tensors="pt")
    hidden = tuple(torch.full((*ids["input_ids"].shape, 8), math.nan) for _ in range(3))
    metric.update(hidden, ids["attention_mask"], torch.arange(16) % 2, ids["input_ids"])
    result = metric.compute()
    assert set(result.values) == set(metric.metric_names(matched=False))
    assert all(math.isnan(float(v)) for v in result.values.values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_tokens": 1}, ValueError, "max_tokens"),
        ({"max_tokens": 2.5}, TypeError, "max_tokens"),
        ({"n_concepts": 300, "max_tokens": 100}, ValueError, "n_concepts"),
        ({"theta": 0}, ValueError, "theta"),
        ({"theta": 1.5}, ValueError, "theta"),
        ({"label_sets": ["upos"]}, ValueError, "label_sets"),
        ({"layers": "top"}, ValueError, "layers"),
        ({"seed": None}, TypeError, "seed"),
        ({"tokenizer": 3}, TypeError, "tokenizer"),
        ({"reference": {"keys": []}}, ValueError, "reference"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _metric(**kwargs)


def test_bad_models_and_batches_are_refused(model, tokenizer):
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    with pytest.raises(ValueError, match="pass tokenizer="):  # built from a config: no name_or_path
        _metric().check_model(BertForSequenceClassification(tiny_bert_config()))
    with pytest.raises(ValueError, match="vocabulary has 128"):  # MiniLM's 30,522 tokens for a 128-token model
        _metric(tokenizer=tokenizer).check_model(BertForSequenceClassification(tiny_bert_config()))
    with pytest.raises(ValueError, match="no tokenizer"):
        _metric().update((torch.zeros(2, 3, 4),) * 3, None, torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.long))
    metric = _metric(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs input_ids"):
        metric.update((torch.zeros(2, 3, 4),) * 3, None, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels has 1 entries"):
        metric.update((torch.zeros(2, 3, 4),) * 3, None, torch.tensor([0]), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no word tokens were added"):
        _metric(tokenizer=tokenizer).compute()

    class Slow:  # a stand-in for a slow (Python) tokenizer: no word ids, no offsets
        is_fast = False

        def __call__(self, *a, **k):
            return {}

    with pytest.raises(TypeError, match="fast tokenizer"):
        _metric(tokenizer=Slow())
