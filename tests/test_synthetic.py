from gr_train import synthetic
from gr_train.config import SyntheticSection
from gr_train.data import load_records


def test_generate_is_deterministic_and_labelled():
    cfg = SyntheticSection()
    a = synthetic.generate(cfg, 200, seed=3)
    assert a == synthetic.generate(cfg, 200, seed=3)
    assert a != synthetic.generate(cfg, 200, seed=4)
    two_hop = [r for r in a if r.intermediate]
    assert 0.55 < len(two_hop) / len(a) < 0.85  # one_hop_fraction 0.3
    for r in a:
        assert len(r.ctxs) == 2 * cfg.n_chains
        assert len({c.text for c in r.ctxs}) == len(r.ctxs)
        gold = [c for c in r.ctxs if c.is_gold]
        if r.intermediate:
            # the bridge names the question's work and the intermediate person, not the answer: indirect
            assert sum(c.direct for c in r.ctxs) == 1 and sum(c.indirect for c in r.ctxs) == 1
            bridge = next(c for c in r.ctxs if c.indirect)
            assert r.question.split()[-1] in bridge.text and r.intermediate in bridge.text
            assert r.answers[0] not in bridge.text
        else:
            assert len(gold) == 1 and gold[0].direct
        # hard distractors: answer-typed passages that are not gold
        assert sum(c.has_answer is False and not c.is_gold and synthetic.BORN_IN in c.text for c in r.ctxs) >= 3


def test_stream_is_a_function_of_step_and_follows_curriculum():
    cfg = SyntheticSection(curriculum=[[2, 1], [2, 3]])
    s = synthetic.stream(cfg, seed=0, batch_size=4)
    batches = [next(s) for _ in range(6)]
    assert [len(b[0].ctxs) // 2 for b in batches] == [1, 1, 3, 3, 5, 5]
    resumed = next(synthetic.stream(cfg, seed=0, batch_size=4, start_step=4))
    assert resumed == batches[4]


def test_demo_files_load_and_tokenizer_covers_vocabulary(tmp_path):
    cfg = SyntheticSection(n_train=20, n_dev=10)
    train, dev = synthetic.write_demo_data(cfg, tmp_path, seed=0)
    tr, dv = load_records(train), load_records(dev)
    assert len(tr) == 20 and len(dv) == 10
    tok = synthetic.build_tokenizer(cfg)
    unk = tok.convert_tokens_to_ids("[UNK]")
    for r in tr:
        for text in [r.question] + [c.text for c in r.ctxs] + r.answers:
            assert unk not in tok(text, add_special_tokens=False)["input_ids"]
    pair = tok("birthplace-of W01", "W01 created-by P02")
    assert pair["input_ids"][0] == tok.cls_token_id and pair["token_type_ids"][-1] == 1
