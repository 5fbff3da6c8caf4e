from gr_train import synthetic
from gr_train.config import SyntheticSection, load_config
from gr_train.data import load_records

# The first passages of generate(SyntheticSection(), 1, seed=3) as written before the structure knobs existed.
DEFAULT_SEED3_FIRST_TEXTS = ["W18 created-by P19", "W07 created-by P29", "P29 born-in T02"]


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


def test_structure_knobs_copy_gold_and_add_single_distractors_that_never_complete_a_chain():
    from gr_train.data import fact_ids

    cfg = load_config(None, ["synthetic.n_chains=3", "synthetic.gold_copies=2", "synthetic.answer_distractors=2",
                             "synthetic.bridge_distractors=3", "synthetic.one_hop_fraction=0"]).synthetic
    for r in synthetic.generate(cfg, 50, seed=1):
        texts = [p.text for p in r.ctxs]
        assert len(texts) == 2 * 3 + 2 + 2 + 3
        gold = [p.text for p in r.ctxs if p.is_gold]
        assert len(gold) == 4 and len(set(gold)) == 2  # bridge and answer passage, twice each
        assert sorted(fact_ids(r)) == [-1] * 9 + [0, 0, 1, 1]
        born = {t.split()[0]: t.split()[2] for t in texts if synthetic.BORN_IN in t}
        made = {tuple(t.split()) for t in texts if synthetic.CREATED_BY in t}
        chained = sum(1 for w, _, p in made if p in born)  # a bridge whose person has a birthplace passage
        assert chained == 3  # the gold chain and the 2 distractor chains; single distractors stay single
        assert r.answers[0] in born.values()


def test_default_structure_draws_the_demo_data_unchanged():
    """The knobs at their defaults consume the generator exactly as before: the demo's data files are fixed."""
    cfg = load_config(None).synthetic
    r = synthetic.generate(cfg, 1, seed=3)[0]
    assert [p.text for p in r.ctxs][:3] == DEFAULT_SEED3_FIRST_TEXTS


def test_topical_distractors_name_the_question_entity_with_another_relation_and_an_unused_town():
    cfg = load_config(None, ["synthetic.n_chains=4", "synthetic.topical_distractors=2",
                             "synthetic.answer_distractors=1"]).synthetic
    records = synthetic.generate(cfg, 200, seed=5)
    for r in records:
        assert len(r.ctxs) == 2 * 4 + 1 + 2
        entity = r.question.split()[-1]
        topical = [p for p in r.ctxs if synthetic.SET_IN in p.text or synthetic.LIVES_IN in p.text]
        assert len(topical) == 2 and not any(p.is_gold or p.has_answer for p in topical)
        relation = synthetic.LIVES_IN if entity.startswith("P") else synthetic.SET_IN
        assert all(p.text.split()[:2] == [entity, relation] for p in topical)
        # each topical town appears nowhere else in the question's passages: no chain, no other distractor
        words = [w for p in r.ctxs if p not in topical for w in p.text.split()]
        assert all(p.text.split()[2] not in words and p.text.split()[2] != r.answers[0] for p in topical)
    assert {"birthplace-of", "creator-of", "birthplace-of-creator"} == {r.question.split()[0] for r in records}
    tok = synthetic.build_tokenizer(cfg)
    assert len(tok) == len(synthetic.vocabulary(load_config(None).synthetic)) + 2
    assert tok.convert_tokens_to_ids(synthetic.SET_IN) != tok.unk_token_id


def test_shortcut_answer_passages_name_the_work_and_keep_both_gold_labels():
    from gr_train import structure

    cfg = load_config(None, ["synthetic.shortcut_fraction=0.5", "synthetic.one_hop_fraction=0"]).synthetic
    records = synthetic.generate(cfg, 400, seed=2)
    shortcut = [r for r in records if any(len(p.text.split()) == 5 for p in r.ctxs)]
    assert 0.4 < len(shortcut) / len(records) < 0.6
    for r in shortcut:
        w = r.question.split()[-1]
        direct = [p for p in r.ctxs if p.direct]
        assert [p.text for p in direct] == [f"{w} created-by {r.intermediate} born-in {r.answers[0]}"]
        assert sum(p.indirect for p in r.ctxs) == 1  # the bridge stays gold, as HotpotQA labels both facts
        # every chain's answer passage has the long form: length alone does not single out the gold one
        assert sum(len(p.text.split()) == 5 for p in r.ctxs) == cfg.n_chains
    stats = structure.dataset_stats(records)
    assert abs(stats["one_hop_shortcut"] - len(shortcut) / len(records)) < 1e-9


def test_three_hop_questions_chain_three_gold_passages_of_which_only_the_first_names_the_work():
    from gr_train.data import fact_ids

    cfg = load_config(None, ["synthetic.n_chains=3", "synthetic.topical_distractors=1",
                             "synthetic.three_hop_fraction=1.0"]).synthetic
    records = synthetic.generate(cfg, 300, seed=2)
    kinds = [synthetic.question_kind(r) for r in records]
    assert set(kinds) == {"one_hop", "three_hop"} and 0.55 < kinds.count("three_hop") / len(records) < 0.85
    for r, kind in zip(records, kinds):
        texts = [p.text for p in r.ctxs]
        assert len(texts) == len(set(texts)) == 3 * 3 + 1  # every question has the third passages, one-hop too
        if kind != "three_hop":
            continue
        w, (answer,) = r.question.split()[-1], r.answers
        gold = {p.text: p for p in r.ctxs if p.is_gold}
        person, t = r.intermediate.split()  # both bridge entities, in hop order (the demo reader's deep supervision)
        assert set(gold) == {f"{w} created-by {person}", f"{person} born-in {t}", f"{t} twinned-with {answer}"}
        # the answer only in the last passage, which with the second never names the work
        assert [p.text for p in r.ctxs if p.has_answer] == [f"{t} twinned-with {answer}"]
        assert sum(w in x.split() for x in texts) == 2  # its bridge and its topical distractor
        # each of the three gold facts has a look-alike in every distractor chain
        for relation in (synthetic.CREATED_BY, synthetic.BORN_IN, synthetic.TWINNED_WITH):
            assert sum(relation in x.split() for x in texts) == 3
        assert sorted(fact_ids(r)) == [-1] * 7 + [0, 1, 2]
    # every town of a twin passage appears only in its own chain
    for r in records:
        twins = [p.text.split()[2] for p in r.ctxs if synthetic.TWINNED_WITH in p.text]
        words = [x for p in r.ctxs if synthetic.TWINNED_WITH not in p.text for x in p.text.split()]
        assert len(set(twins)) == 3 and not set(twins) & set(words)


def test_three_hop_words_come_last_and_only_when_on_and_the_fraction_is_checked():
    import pytest

    from gr_train.config import ConfigError

    base = load_config(None, ["synthetic.topical_distractors=2"]).synthetic
    on = load_config(None, ["synthetic.topical_distractors=2", "synthetic.three_hop_fraction=0.5"]).synthetic
    assert synthetic.vocabulary(on) == synthetic.vocabulary(base) + [synthetic.THREE_HOP, synthetic.TWINNED_WITH]
    half = synthetic.generate(on, 400, seed=0)
    assert 0.25 < sum(synthetic.question_kind(r) == "three_hop" for r in half) / len(half) < 0.45  # 0.5 of 0.7
    with pytest.raises(ConfigError, match="synthetic.three_hop_fraction"):
        load_config(None, ["synthetic.three_hop_fraction=1.5"])
    with pytest.raises(ValueError, match="two towns per chain"):
        synthetic.generate(load_config(None, ["synthetic.n_chains=16", "synthetic.three_hop_fraction=1.0"]).synthetic,
                           1, seed=0)
