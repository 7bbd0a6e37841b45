"""Tree topological probe: probe, ssp/essp labels, fitting, word pooling, CoNLL-U depths, aux loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_topo.scores.tree_probe import (
    AUTHORS_BUDGET,
    DepthProbe,
    ProbeBudget,
    TreeProbeLoss,
    depths_from_conllu,
    fit_probe,
    fit_probes,
    pack_words,
    packed_rows,
    pool_wordpieces,
    probe_loss,
    staircase_targets,
    vocab_tables,
    wordpiece_word_ids,
)

DATA = Path(__file__).resolve().parents[1] / "data"


# ------------------------------------------------------------------ slow reference (authors)
def slow_staircase(norms: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Written from the authors' description (constructLabel.py), one Python loop per token."""
    batchlen, seqlen = norms.shape
    out = torch.zeros(batchlen, seqlen, dtype=torch.float64)
    for i in range(batchlen):
        entries = [[j, norms[i][j]] for j in range(seqlen)]
        entries.sort(key=lambda e: e[1])  # stable: ties keep position order
        for k in range(seqlen):
            if k < 2:
                entries[k][1] = k + 1
                continue
            prev = entries[k - 1][1]
            if abs(entries[k][1] - prev) < abs(prev + 1 - entries[k][1]):
                entries[k][1] = prev
            else:
                entries[k][1] = prev + 1
        entries.sort(key=lambda e: e[0], reverse=reverse)
        for j in range(seqlen):
            out[i][j] = float(entries[j][1])
    return out


def _random_norms(gen: torch.Generator, batch: int, seq: int, dtype: torch.dtype) -> torch.Tensor:
    scale = torch.rand(batch, 1, generator=gen, dtype=torch.float64) * 12
    x = torch.rand(batch, seq, generator=gen, dtype=torch.float64) * scale
    # ties, exact half-integers (the rule's boundary) and integers
    x[:, ::3] = torch.round(x[:, ::3] * 2) / 2
    x[0, :] = x[0, 0]
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_staircase_matches_slow_reference(dtype, reverse):
    gen = torch.Generator().manual_seed(1)
    for seq in (1, 2, 3, 7, 20):
        norms = _random_norms(gen, 9, seq, dtype)
        expected = slow_staircase(norms, reverse=reverse)
        got = staircase_targets(norms, reverse=reverse)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=0)
        assert got.dtype == dtype


def test_staircase_hand_example():
    # sorted norms 0.1, 0.2, 2.4, 2.6, 9.0 -> 1, 2, 2, 3, 4 (step of at most 1)
    norms = torch.tensor([[9.0, 2.6, 0.1, 2.4, 0.2]])
    assert staircase_targets(norms).tolist() == [[4.0, 3.0, 1.0, 2.0, 2.0]]
    assert staircase_targets(norms, reverse=True).tolist() == [[2.0, 2.0, 1.0, 3.0, 4.0]]


@pytest.mark.parametrize("reverse", [False, True])
def test_staircase_mask_equals_reference_on_the_real_positions(reverse):
    gen = torch.Generator().manual_seed(2)
    norms = _random_norms(gen, 6, 12, torch.float64)
    lengths = [12, 1, 2, 5, 9, 0]
    mask = torch.zeros(6, 12, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    got = staircase_targets(norms, mask, reverse=reverse)
    for i, n in enumerate(lengths):
        if n:
            expected = slow_staircase(norms[i : i + 1, :n], reverse=reverse)[0]
            assert got[i, :n].tolist() == expected.tolist()
        assert got[i, n:].abs().sum() == 0


def test_staircase_mask_in_the_middle_is_left_out():
    norms = torch.tensor([[0.3, 100.0, 2.2, 0.1]])
    mask = torch.tensor([[1, 0, 1, 1]])
    # real norms 0.3, 2.2, 0.1 -> sorted 0.1(1), 0.3(2), 2.2(2)
    assert staircase_targets(norms, mask).tolist() == [[2.0, 0.0, 2.0, 1.0]]
    # essp: real positions 0, 2, 3 hold labels 2, 2, 1 -> reversed 1, 2, 2
    assert staircase_targets(norms, mask, reverse=True).tolist() == [[1.0, 0.0, 2.0, 2.0]]


def test_staircase_bad_inputs():
    with pytest.raises(ValueError, match="batch, seq"):
        staircase_targets(torch.zeros(3))
    with pytest.raises(ValueError, match="mask must have shape"):
        staircase_targets(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        staircase_targets(torch.tensor([[1.0, float("nan")]]))
    # NaN at a masked position is ignored
    assert staircase_targets(torch.tensor([[1.0, float("nan")]]), torch.tensor([[1, 0]])).tolist() == [
        [1.0, 0.0]
    ]


# ------------------------------------------------------------------------------- probe / loss
def test_probe_shapes_rank_and_mask():
    probe = DepthProbe(8)
    assert probe.proj.shape == (8, 4)
    assert probe.proj.abs().max() <= 0.05
    h = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = probe(h, mask)
    assert out.shape == (2, 5)
    assert out[0, 3:].abs().sum() == 0
    torch.testing.assert_close(out[1], (h[1] @ probe.proj).pow(2).sum(-1))
    with pytest.raises(ValueError, match="rank must be"):
        DepthProbe(8, rank=0)
    with pytest.raises(TypeError, match="rank must be an int"):
        DepthProbe(8, rank=2.0)
    with pytest.raises(ValueError, match="width"):
        probe(torch.randn(1, 2, 7))


def test_probe_loss_masks_padding():
    pred = torch.tensor([[1.0, 2.0, 50.0]])
    target = torch.tensor([[2.0, 2.0, 0.0]])
    assert probe_loss(pred, target, torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.5)
    assert probe_loss(pred, target).item() == pytest.approx((1 + 0 + 2500) / 3)
    with pytest.raises(ValueError, match="same shape"):
        probe_loss(pred, target[:, :2])


def _synthetic_depth_data(n=120, words=9, d=16, r=3, seed=0):
    """Vectors whose squared norm along a hidden rank-r projection equals random tree depths."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    depths = torch.randint(1, 6, (n, words), generator=g).double()
    direction = torch.randn(n, words, r, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    inside = direction * depths.sqrt()[..., None]  # ||inside||^2 = depth
    outside = 0.3 * torch.randn(n, words, d - r, generator=g, dtype=torch.float64)
    hidden = torch.cat([inside, outside], -1) @ basis.T
    mask = torch.ones(n, words, dtype=torch.bool)
    mask[::4, 6:] = False
    return hidden, mask, depths * mask


def test_supervised_probe_recovers_hidden_depths():
    hidden, mask, depths = _synthetic_depth_data()
    budget = ProbeBudget(epochs=150, lr=2e-2, batch_size=16)
    result = fit_probe(hidden, mask, depths, budget=budget, rank=4, seed=0)
    assert result.val_loss < 0.02
    assert result.val_loss < 0.01 * depths[mask].var().item()
    pred = result.probe(hidden, mask)
    assert (pred - depths)[mask].abs().max() < 0.6


def test_ssp_probe_trains_and_is_seeded():
    hidden, mask, _ = _synthetic_depth_data(n=40)
    budget = ProbeBudget(epochs=5, lr=1e-2, batch_size=8)
    a = fit_probe(hidden, mask, "ssp", budget=budget, seed=3)
    b = fit_probe(hidden, mask, "ssp", budget=budget, seed=3)
    c = fit_probe(hidden, mask, "essp", budget=budget, seed=3)
    assert a.val_loss == b.val_loss
    assert torch.equal(a.probe.proj, b.probe.proj)
    assert a.val_loss != c.val_loss
    assert a.probe.proj.shape == (16, 8)
    untrained = fit_probe(hidden, mask, "ssp", budget=ProbeBudget(epochs=1, lr=1e-12), seed=3)
    assert a.val_loss < untrained.val_loss


def slow_fit(hidden, mask, rule, budget, seed):
    """One probe trained alone with torch's own clip_grad_norm_, written from the authors' recipe."""
    gen = torch.Generator().manual_seed(seed)
    probe = DepthProbe(hidden.shape[-1], generator=gen).to(hidden.dtype)
    perm = torch.randperm(hidden.shape[0], generator=gen)
    n_train = min(len(perm) - 1, max(1, int((1 - budget.val_fraction) * len(perm))))
    train, val = perm[:n_train], perm[n_train:]

    def loss_of(idx):
        pred = probe(hidden[idx], mask[idx])
        target = (
            rule[idx]
            if isinstance(rule, torch.Tensor)
            else staircase_targets(pred, mask[idx], rule == "essp")
        )
        return probe_loss(pred, target, mask[idx])

    steps = -(-n_train // budget.batch_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=budget.lr, eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: max(0.0, (budget.epochs * steps - k) / (budget.epochs * steps))
    )
    for _ in range(budget.epochs):
        order = train[torch.randperm(n_train, generator=gen)]
        for start in range(0, n_train, budget.batch_size):
            opt.zero_grad()
            loss_of(order[start : start + budget.batch_size]).backward()
            torch.nn.utils.clip_grad_norm_(probe.parameters(), budget.clip_norm)
            opt.step()
            sched.step()
    with torch.no_grad():
        return float(loss_of(val)), probe.proj.detach()


def test_batched_probes_equal_probes_trained_alone():
    """fit_probes trains every (layer, rule) probe as if alone: its own loss, clipping and AdamW
    state. One layer is scaled up so its gradients are clipped while the others' are not."""
    hidden, mask, depths = _synthetic_depth_data(n=30)
    layers = [hidden, 10.0 * hidden.flip(-1), 0.1 * hidden]
    budget = ProbeBudget(epochs=3, lr=1e-2, batch_size=8)
    packed = torch.stack([pack_words(h, mask)[0] for h in layers], dim=1)
    rules = ["ssp", "essp", depths]
    fitted = fit_probes(
        packed, mask.sum(1), [r if isinstance(r, str) else r[mask] for r in rules], budget, seed=4
    )
    assert [len(row) for row in fitted] == [3, 3, 3]
    for i, h in enumerate(layers):
        for j, rule in enumerate(rules):
            val, proj = slow_fit(h, mask, rule, budget, seed=4)
            assert fitted[i][j].val_loss == pytest.approx(val, rel=1e-9)
            torch.testing.assert_close(fitted[i][j].probe.proj, proj, rtol=1e-9, atol=1e-12)
            assert fit_probe(h, mask, rule, budget=budget, seed=4).val_loss == pytest.approx(val, rel=1e-9)
    assert len({round(fitted[i][0].val_loss, 6) for i in range(3)}) == 3  # the layers differ


def test_packed_rows_and_fit_probes_bad_inputs():
    lengths = torch.tensor([2, 3, 4])
    assert packed_rows(lengths, torch.tensor([2, 0])).tolist() == [5, 6, 7, 8, 0, 1]
    hidden, mask, _ = _synthetic_depth_data(n=6)
    words, lens = pack_words(hidden, mask)
    with pytest.raises(ValueError, match="total_words, n_layers, d"):
        fit_probes(words, lens)
    with pytest.raises(ValueError, match="lengths sum to"):
        fit_probes(words[:, None], lens + 1)
    with pytest.raises(ValueError, match="at least one rule"):
        fit_probes(words[:, None], lens, [])
    with pytest.raises(TypeError, match="list of rules"):
        fit_probes(words[:, None], lens, "ssp")
    with pytest.raises(ValueError, match=rf"depths of shape \({words.shape[0]},\)"):
        fit_probes(words[:, None], lens, [torch.ones(3)])


def test_fit_probe_works_under_inference_mode():
    hidden, mask, _ = _synthetic_depth_data(n=10)
    with torch.inference_mode():
        hidden = hidden * 1.0
        result = fit_probe(hidden, mask, "ssp", budget=ProbeBudget(epochs=1, lr=1e-3))
    assert result.val_loss > 0


def test_fit_probe_bad_inputs():
    hidden, mask, depths = _synthetic_depth_data(n=8)
    with pytest.raises(ValueError, match="at least 2 words"):
        short = mask.clone()
        short[2, 1:] = False
        fit_probe(hidden, short)
    with pytest.raises(ValueError, match="at least 2 sentences"):
        fit_probe(hidden[:1], mask[:1])
    with pytest.raises(ValueError, match="targets must be"):
        fit_probe(hidden, mask, "depth")
    with pytest.raises(ValueError, match="targets must be"):
        fit_probe(hidden, mask, depths[:, :3])
    with pytest.raises(ValueError, match="rank must be"):
        fit_probe(hidden, mask, rank=0)
    with pytest.raises(ValueError, match="budget.epochs"):
        fit_probe(hidden, mask, budget=ProbeBudget(epochs=0))
    with pytest.raises(TypeError, match="budget.batch_size must be an int"):
        fit_probe(hidden, mask, budget=ProbeBudget(batch_size=8.0))
    with pytest.raises(ValueError, match="budget.val_fraction"):
        fit_probe(hidden, mask, budget=ProbeBudget(val_fraction=1.0))
    with pytest.raises(TypeError, match="seed must be an int"):
        fit_probe(hidden, mask, seed=None)
    with pytest.raises(ValueError, match="n_sentences, n_words, d"):
        fit_probe(hidden[0], mask[0])
    assert AUTHORS_BUDGET == ProbeBudget(epochs=10, lr=2e-5, batch_size=32, clip_norm=1.0, val_fraction=0.1)


# ------------------------------------------------------------------------------ word pooling
def test_wordpiece_word_ids_and_mean_pooling():
    # vocab: 0 [PAD], 1 [CLS], 2 [SEP], 3 "play", 4 "##ing", 5 "cats", 6 "##s"
    continuation = torch.tensor([False, False, False, False, True, False, True])
    special = torch.tensor([True, True, True, False, False, False, False])
    ids = torch.tensor([[1, 3, 4, 5, 2, 0], [1, 5, 6, 4, 3, 2]])
    att = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    word_ids = wordpiece_word_ids(ids, continuation, special, att)
    assert word_ids.tolist() == [[-1, 0, 0, 1, -1, -1], [-1, 0, 0, 0, 1, -1]]
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float64).reshape(2, 6, 2).requires_grad_()
    words, mask = pool_wordpieces(hidden, word_ids)
    assert mask.tolist() == [[True, True], [True, True]]
    torch.testing.assert_close(words[0, 0], hidden[0, 1:3].mean(0))
    torch.testing.assert_close(words[1, 0], hidden[1, 1:4].mean(0))
    torch.testing.assert_close(words[1, 1], hidden[1, 4])
    words.sum().backward()
    assert hidden.grad[0, 0].abs().sum() == 0 and hidden.grad[0, 1, 0] == pytest.approx(0.5)


def test_vocab_tables_of_the_embedded_wordpiece_tokenizer():
    from transformers import AutoTokenizer

    from lightning_topo.models.embedded import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
    continuation, special = vocab_tables(tok)
    assert (
        continuation[tok.convert_tokens_to_ids("##ly")]
        and not continuation[tok.convert_tokens_to_ids("film")]
    )
    assert special.nonzero().flatten().tolist() == sorted(tok.all_special_ids)
    enc = tok(["stupidly made film", "a film"], return_tensors="pt", padding=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert tokens[1:3] == ["stupid", "##ly"]
    word_ids = wordpiece_word_ids(enc["input_ids"], continuation, special, enc["attention_mask"])
    assert word_ids.tolist() == [[-1, 0, 0, 1, 2, -1], [-1, 0, 1, -1, -1, -1]]


# ------------------------------------------------------------------------------------ CoNLL-U
def test_depths_from_conllu_hand_written_file():
    sents = depths_from_conllu(DATA / "tiny_tree.conllu")
    assert [s.text for s in sents][0] == "The cat sat on the mat."
    assert sents[0].depths == (3, 2, 1, 3, 3, 2, 2)
    assert sents[1].words == ("I", "do", "n't", "know", ".")  # multiword token 2-3 skipped
    assert sents[1].depths == (2, 2, 2, 1, 2)
    assert sents[2].depths == (2, 4, 3, 2, 1, 2, 2)
    texts = [s.text for s in sents]
    assert depths_from_conllu(DATA / "tiny_tree.conllu", texts=texts) == sents


def test_depths_from_conllu_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="CoNLL-U file not found"):
        depths_from_conllu(tmp_path / "missing.conllu")
    texts = [s.text for s in depths_from_conllu(DATA / "tiny_tree.conllu")]
    with pytest.raises(ValueError, match="sentence 2: '# text' is"):
        depths_from_conllu(DATA / "tiny_tree.conllu", texts=[texts[0], "I do know.", texts[2]])
    with pytest.raises(ValueError, match="3 sentences but 2 texts"):
        depths_from_conllu(DATA / "tiny_tree.conllu", texts=texts[:2])
    good = (DATA / "tiny_tree.conllu").read_text()
    wrong_text = tmp_path / "wrong_text.conllu"
    wrong_text.write_text(
        good.replace("# text = The cat sat on the mat.", "# text = The dog sat on the mat.")
    )
    with pytest.raises(ValueError, match="sentence 1: the tokens spell"):
        depths_from_conllu(wrong_text)
    cycle = tmp_path / "cycle.conllu"
    cycle.write_text(good.replace("1\tThe\tthe\tDET\tDT\t_\t2", "1\tThe\tthe\tDET\tDT\t_\t1"))
    with pytest.raises(ValueError, match="cycle"):
        depths_from_conllu(cycle)
    outside = tmp_path / "outside.conllu"
    outside.write_text(good.replace("1\tThe\tthe\tDET\tDT\t_\t2", "1\tThe\tthe\tDET\tDT\t_\t9"))
    with pytest.raises(ValueError, match="not a word of the sentence"):
        depths_from_conllu(outside)
    empty = tmp_path / "empty.conllu"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no sentences"):
        depths_from_conllu(empty)


# --------------------------------------------------------------------------- auxiliary loss
def test_tree_probe_loss_checks():
    with pytest.raises(ValueError, match="targets must be"):
        TreeProbeLoss(8, targets="sp")
    with pytest.raises(ValueError, match="rank must be"):
        TreeProbeLoss(8, rank=0)
    with pytest.raises(ValueError, match="both continuation and special"):
        TreeProbeLoss(8, continuation=torch.zeros(3, dtype=torch.bool))

    class Enc:
        hidden_states = (torch.randn(2, 4, 8), torch.randn(2, 4, 8))
        attention_mask = torch.ones(2, 4)

    with pytest.raises(ValueError, match="layer 5 is out of range"):
        TreeProbeLoss(8, layer=5)(Enc(), {})
    value = TreeProbeLoss(8, layer=1)(Enc(), {})
    assert value.ndim == 0 and value > 0


# ------------------------------------------------------------------------ sentence sample
def _sample_inputs(n=30, seq=8):
    g = torch.Generator().manual_seed(0)
    hidden = tuple(torch.randn(n, seq, 4, generator=g) for _ in range(3))
    lengths = torch.randint(1, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids = torch.randint(5, 100, (n, seq), generator=g) * mask

    def feed(metric, rows):
        metric.update(tuple(h[rows] for h in hidden), mask[rows], None, ids[rows])

    return hidden, lengths, feed


def _probe_sample(layers, max_samples, seed):
    from lightning_topo.metrics import TreeProbeScore

    return TreeProbeScore(layers=layers, targets=("ssp",), max_samples=max_samples, seed=seed)


@pytest.mark.filterwarnings("ignore:TreeProbeScore. no tokenizer")
def test_word_sample_is_capped_seeded_and_batch_size_free():
    hidden, lengths, feed = _sample_inputs()

    def run(batch_size, seed=0, order=None):
        metric = _probe_sample([0, 2], 10, seed)
        rows = torch.arange(30) if order is None else order
        for s in range(0, 30, batch_size):
            feed(metric, rows[s : s + batch_size])
        return metric.word_sample()

    a, b, c = run(7), run(30), run(7, seed=1)
    d = run(4, order=torch.randperm(30, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[0][1], b[0][1]) and torch.equal(a[2][0], d[2][0])
    assert not torch.equal(a[2][0], c[2][0])
    words, keep = a[2]
    assert words.shape[0] == 10 and bool((keep.sum(1) >= 2).all())
    # every kept sentence is one of the inputs, with its words in order
    for i in range(10):
        k = int(keep[i].sum())
        assert any(torch.equal(words[i, :k], hidden[2][j, :k]) and int(lengths[j]) == k for j in range(30))


@pytest.mark.filterwarnings("ignore:TreeProbeScore. no tokenizer")
def test_word_sample_of_merged_shards_is_the_single_process_sample():
    """Under DDP the states are concatenated (torchmetrics' ``cat``): feeding both shards, with the
    rows a DistributedSampler repeats, gives the one-process sample (a repeated sentence counts once)."""
    _, _, feed = _sample_inputs()
    single = _probe_sample([1], 12, 3)
    feed(single, torch.arange(30))
    expected = single.word_sample()[1]
    merged = _probe_sample([1], 12, 3)
    for rank in range(2):
        rows = torch.arange(rank, 32, 2) % 30  # DistributedSampler-like shards; rows 0 and 1 repeated
        for s in range(0, len(rows), 5):
            feed(merged, rows[s : s + 5])
    words, mask = merged.word_sample()[1]
    assert torch.equal(mask, expected[1]) and torch.equal(words, expected[0])


@pytest.mark.filterwarnings("ignore:TreeProbeScore. no tokenizer")
def test_each_segment_of_a_sentence_pair_is_its_own_sentence():
    """``token_type_ids`` with a second segment: the tree probe reads two sentences per row (each
    segment's words, in order), not one sentence across the pair."""
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(4, 9, 6, generator=g) for _ in range(3)]
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[3, 8] = 0  # row 3's second segment is 3 words long
    types = torch.zeros(4, 9, dtype=torch.long)
    types[:, 5:] = 1
    paired, single = _probe_sample([2], 100, 0), _probe_sample([2], 100, 0)
    ids = torch.randint(1000, 2000, (4, 9), generator=g)  # distinct sentences (repeats count once)
    paired.update(hidden, mask, input_ids=ids, token_type_ids=types)
    single.update(hidden, mask, input_ids=ids)
    words, keep = paired.word_sample()[2]
    assert sorted(keep.sum(1).tolist()) == [3, 4, 4, 4, 5, 5, 5, 5]
    segments = [hidden[2][r, :5] for r in range(4)] + [hidden[2][r, 5 : 9 - (r == 3)] for r in range(4)]
    for i in range(8):  # every sentence is one segment of one row, whole and in order
        k = int(keep[i].sum())
        assert sum(torch.equal(words[i, :k], seg) for seg in segments) == 1
    assert sorted(single.word_sample()[2][1].sum(1).tolist()) == [8, 9, 9, 9]
