import pytest
import torch

from gr_train import gumbel, synthetic
from gr_train.config import ReaderSection, SyntheticSection, load_config
from gr_train.demo import SHIPPED_READER
from gr_train.evaluate import reader_reference
from gr_train.models import build_reader
from gr_train.reader import token_mean_ce


@pytest.fixture(params=[{}, {"output": "pointer"}, {"match_feature": True}], ids=["vocab", "pointer", "match"])
def reader(request):
    cfg = ReaderSection(kind="demo_fid", passage_max_tokens=8, answer_max_tokens=4,
                        model_config={"d_model": 32, "n_heads": 2, "d_ff": 64, **request.param})
    return build_reader(cfg, synthetic.build_tokenizer(SyntheticSection()))


def test_question_token_match_feature_marks_passage_tokens_equal_to_question_tokens():
    from gr_train.demo_reader import question_token_match

    # question "a b" [SEP=9] passage "b c a" [EOS] [PAD]
    ids = torch.tensor([[1, 2, 9, 2, 3, 1, 4, 0]])
    assert question_token_match(ids, 9).tolist() == [[False, False, False, True, False, True, False, False]]


@pytest.fixture
def records():
    return synthetic.generate(SyntheticSection(), 6, seed=1)


def inputs_for(reader, records, keep=None):
    ps = [[(c.title, c.text) for i, c in enumerate(r.ctxs) if keep is None or i in keep[b]] for b, r in enumerate(records)]
    return reader.tokenize([r.question for r in records], ps, [r.answers[0] for r in records])


def test_frozen_and_built(reader):
    assert not any(p.requires_grad for p in reader.parameters())
    assert not reader.training


def test_hard_mask_equals_dropping_passages(reader, records):
    n = len(records[0].ctxs)
    w = torch.randn(len(records), n)
    M = gumbel.hard_topk_mask(w, 3)
    keep = [set(gumbel.topk_indices(w, 3)[b].tolist()) for b in range(len(records))]
    full = inputs_for(reader, records)
    sub = inputs_for(reader, records, keep)
    masked, _ = reader.decoder_logits(reader.encode_passages(full), full, gumbel.log_mask(M))
    dropped, _ = reader.decoder_logits(reader.encode_passages(sub), sub, None)
    # compared as output distributions: the pointer head's log-probabilities of tokens absent from every kept
    # passage sit at log(1e-9) either way and differ only in that floor
    assert torch.allclose(torch.softmax(masked, -1), torch.softmax(dropped, -1), atol=1e-5)
    # and the mask matters: an all-ones mask gives different outputs
    ones, _ = reader.decoder_logits(reader.encode_passages(full), full, torch.zeros(len(records), n))
    assert not torch.allclose(ones, dropped, atol=1e-3)


def test_padded_candidates_behave_like_absent(reader, records):
    full = inputs_for(reader, records)
    n = full["passage_ids"].shape[1]
    valid = torch.ones(len(records), n, dtype=torch.bool)
    valid[:, 7:] = False
    keep = [set(range(7))] * len(records)
    sub = inputs_for(reader, records, keep)
    a = reader.answer_loss(reader.encode_passages(full), full, gumbel.log_mask(valid.float(), valid=valid))
    b = reader.answer_loss(reader.encode_passages(sub), sub, torch.zeros(len(records), 7))
    assert torch.allclose(a, b, atol=1e-5)


def test_gradient_reaches_mask_not_reader_and_states_hold_no_graph(reader, records):
    inp = inputs_for(reader, records)
    H = reader.encode_passages(inp)
    assert not H.requires_grad and H.grad_fn is None
    w = torch.randn(len(records), inp["passage_ids"].shape[1], requires_grad=True)
    M = gumbel.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(0))
    loss = reader.answer_loss(H, inp, gumbel.log_mask(M)).mean()
    loss.backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert all(p.grad is None for p in reader.parameters())


def test_no_grad_path_equals_naive(reader, records):
    inp = inputs_for(reader, records)
    log_M = torch.log(torch.rand(len(records), inp["passage_ids"].shape[1]).clamp_min(1e-3))
    a = reader.answer_loss(reader.encode_passages(inp), inp, log_M)
    b = reader.answer_loss_naive(inp, log_M)
    assert torch.allclose(a, b, atol=1e-6)


def test_save_load_round_trip(reader, records, tmp_path):
    reader.save(tmp_path / "r")
    again = build_reader(ReaderSection(kind="demo_fid", name_or_path=str(tmp_path / "r"), passage_max_tokens=8,
                                       answer_max_tokens=4))
    inp = inputs_for(reader, records)
    lm = torch.zeros(len(records), inp["passage_ids"].shape[1])
    assert torch.equal(reader.answer_loss(reader.encode_passages(inp), inp, lm),
                       again.answer_loss(again.encode_passages(inp), inp, lm))
    assert reader.generate(reader.encode_passages(inp), inp) == again.generate(again.encode_passages(inp), inp)


def test_missing_reader_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no demo reader here"):
        build_reader(ReaderSection(kind="demo_fid", name_or_path=str(tmp_path)))


BASE_READER = SHIPPED_READER.parent / "demo_reader"
TOPICAL_SHORTCUT = ["synthetic.n_chains=4", "synthetic.topical_distractors=2", "synthetic.shortcut_fraction=0.5",
                    "reader.passage_max_tokens=10"]


THREE_HOP_READER = SHIPPED_READER.parent / "demo_reader_three_hop"
THREE_HOP = ["synthetic.n_chains=3", "synthetic.topical_distractors=1", "synthetic.three_hop_fraction=1.0",
             "reader.passage_max_tokens=10"]


@pytest.mark.parametrize("path, setting", [(BASE_READER, ["reader.passage_max_tokens=8"]),
                                           (SHIPPED_READER, TOPICAL_SHORTCUT), (THREE_HOP_READER, THREE_HOP)],
                         ids=["base", "topical", "three_hop"])
def test_shipped_readers_do_the_hop(path, setting):
    """The shipped demo readers read their settings: multi-hop questions are answered with every passage, and fall
    towards chance (1 of the answer-typed passages) when the bridge passages are removed from a question that needs
    them (a shortcut question does not: its answer passage states the bridge fact). The three-hop reader reads
    "W created-by P", "P born-in T", "T twinned-with T2" among 3 chains' look-alikes."""
    cfg = load_config(None, [f"reader.name_or_path={path}", *setting])
    reader = build_reader(cfg.reader)
    dev = [r for r in synthetic.generate(cfg.synthetic, 300, seed=12345) if r.intermediate]
    needs_bridge = [r for r in dev if all(len(p.text.split()) == 3 for p in r.ctxs)]
    assert len(needs_bridge) > 60
    assert reader_reference(reader, dev)["all"] >= 0.8
    em = reader_reference(reader, needs_bridge)
    assert em["all"] >= 0.8 and em["no_indirect"] <= 0.45 and em["none"] <= 0.1


def test_init_from_copies_a_reader_into_a_grown_vocabulary(tmp_path):
    """reader.init_from: the topical relations grow the vocabulary by two words; every other weight and every
    shared token's embedding row comes from the source reader, the new rows keep their random init."""
    small = {"d_model": 32, "n_heads": 2, "d_ff": 64}
    torch.manual_seed(0)
    source = build_reader(ReaderSection(model_config=small), synthetic.build_tokenizer(SyntheticSection()))
    source.save(tmp_path / "source")
    grown_tok = synthetic.build_tokenizer(SyntheticSection(topical_distractors=1))
    torch.manual_seed(1)
    grown = build_reader(ReaderSection(model_config=small, init_from=str(tmp_path / "source")), grown_tok)
    theirs, ours = source.model.state_dict(), grown.model.state_dict()
    assert ours["embed.weight"].shape[0] == theirs["embed.weight"].shape[0] + 2
    for name, value in ours.items():
        if name != "embed.weight":
            assert torch.equal(value, theirs[name]), name
    their_vocab = source.tokenizer.get_vocab()
    for tok, i in grown_tok.get_vocab().items():
        if tok in their_vocab:
            assert torch.equal(ours["embed.weight"][i], theirs["embed.weight"][their_vocab[tok]]), tok
    new = [grown_tok.convert_tokens_to_ids(t) for t in (synthetic.SET_IN, synthetic.LIVES_IN)]
    assert not any(torch.equal(ours["embed.weight"][i], row) for i in new for row in theirs["embed.weight"])
    with pytest.raises(ValueError, match="same model_config"):
        build_reader(ReaderSection(model_config={**small, "d_ff": 32}, init_from=str(tmp_path / "source")), grown_tok)


def test_three_hop_questions_supervise_both_intermediate_entities():
    """A three-hop record's intermediate names two entities in hop order: aux_labels holds the first and aux2_labels
    the second, both at the last question position; the training loss adds the second iteration's cross-entropy
    on aux2_labels to the first's, and equals the two-hop loss when no record has a second entity."""
    cfg = SyntheticSection(n_chains=3, three_hop_fraction=1.0, one_hop_fraction=0.0)
    tok = synthetic.build_tokenizer(cfg)
    torch.manual_seed(0)
    reader = build_reader(ReaderSection(model_config={"d_model": 32, "n_heads": 2, "d_ff": 64}), tok)
    records = synthetic.generate(cfg, 4, seed=0)
    assert all(len(r.intermediate.split()) == 2 for r in records)
    inputs = reader.tokenize([r.question for r in records], [[(p.title, p.text) for p in r.ctxs] for r in records],
                             [r.answers[0] for r in records], intermediates=[r.intermediate for r in records])
    at = inputs["prompt_len"] - 2  # the question's last token: its work W
    rows = torch.arange(len(records))
    ids = [[tok.convert_tokens_to_ids(e) for e in r.intermediate.split()] for r in records]
    assert inputs["aux_labels"][rows, at].tolist() == [i[0] for i in ids]
    assert inputs["aux2_labels"][rows, at].tolist() == [i[1] for i in ids]
    assert (inputs["aux2_labels"] != -100).sum() == len(records)
    answer, aux = reader.training_loss(inputs)
    _, (first, second) = reader.decoder_logits(reader._encode(inputs), inputs, None, hops=2)
    expected = token_mean_ce(first, inputs["aux_labels"]) + token_mean_ce(second, inputs["aux2_labels"])
    assert torch.allclose(aux, expected) and (token_mean_ce(second, inputs["aux2_labels"]) > 0).all()
    two_hop = {**inputs, "aux2_labels": torch.full_like(inputs["aux2_labels"], -100)}
    _, aux_two_hop = reader.training_loss(two_hop)
    assert torch.allclose(aux_two_hop, token_mean_ce(first, inputs["aux_labels"]))
    assert torch.equal(reader.training_loss(two_hop)[0], answer)
