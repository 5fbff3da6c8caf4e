"""The reader report: exact values from a scripted reader whose loss is a known function of the visible passages,
the verdict rule, the paired comparison of two readers, and the shipped demo reader on the embedded data through
the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from gr_train import cli, synthetic
from gr_train.config import load_config
from gr_train.data import Passage, Record
from gr_train.reader import Reader
from gr_train.reader_report import compare_reports, format_comparison, format_report, reader_report, verdict

REPO = Path(__file__).resolve().parents[1]


class ScriptedReader(Reader):
    """NLL = 5 - 2 [an ANSWER passage visible] - bridge_gain [ANSWER and BRIDGE visible] + 0.1 x (other passages
    visible); generates "Paris" when ANSWER and BRIDGE are visible, else "London". A passage's role is read from
    its text, so the report's passage selection is what is tested."""

    def __init__(self, bridge_gain: float = 1.0):
        super().__init__()
        self.bridge_gain = bridge_gain

    def tokenize(self, questions, passages, targets=None):
        n = max(1, len(passages[0]))
        roles = torch.zeros(len(questions), n, dtype=torch.long)  # 0 pad / question alone, 1 answer, 2 bridge, 3 other
        for b, ps in enumerate(passages):
            for i, (title, text) in enumerate(ps):
                roles[b, i] = 1 if "ANSWER" in text else 2 if "BRIDGE" in text else 3 if text else 0
        return {"roles": roles, "passage_ids": roles[:, :, None]}

    def encode_passages(self, inputs):
        return inputs["roles"]

    def _seen(self, roles, log_M):
        visible = log_M > -1.0
        answer = ((roles == 1) & visible).any(-1)
        bridge = ((roles == 2) & visible).any(-1)
        return answer, bridge, ((roles == 3) & visible).sum(-1)

    def answer_loss(self, states, inputs, log_M):
        answer, bridge, others = self._seen(states, log_M)
        return 5.0 - 2.0 * answer.float() - self.bridge_gain * (answer & bridge).float() + 0.1 * others.float()

    def generate(self, states, inputs, log_M=None, max_new_tokens=8):
        answer, bridge, _ = self._seen(states, torch.zeros(states.shape) if log_M is None else log_M)
        return ["The answer is Paris." if a and b else "London" for a, b in zip(answer.tolist(), bridge.tolist())]


def _records() -> list[Record]:
    other = [Passage("t", f"filler {i}", is_gold=False) for i in range(3)]
    two_hop = [Record(f"q{i}", "where?", ["Paris"], [Passage("a", "ANSWER in Paris", is_gold=True),
                                                     Passage("b", "BRIDGE", is_gold=True), *other]) for i in range(2)]
    one_hop = Record("q2", "where?", ["Paris"], [Passage("a", "ANSWER in Paris", is_gold=True), *other])
    yes_no = Record("q3", "same?", ["yes"], [Passage("a", "BRIDGE one", is_gold=True),
                                             Passage("b", "BRIDGE two", is_gold=True), *other])
    return [*two_hop, one_hop, yes_no]


def test_scripted_reader_gives_the_known_losses_shares_and_answers():
    cfg = load_config(None, ["eval.batch_size=3"])  # two batches: the concatenation is tested too
    rep = reader_report(ScriptedReader(), _records(), cfg)
    pq = rep["per_question"]
    nan = math.nan
    expected = {  # two-hop, two-hop, one-hop, yes/no (3 fillers each)
        "nll_all": [2.3, 2.3, 3.3, 5.3], "nll_gold": [2.0, 2.0, 3.0, 5.0], "nll_direct": [3.0, 3.0, 3.0, nan],
        "nll_indirect": [5.0, 5.0, nan, nan], "nll_no_indirect": [3.3, 3.3, nan, nan], "nll_none": [5.0] * 4,
        "nll_pair": [2.0, 2.0, nan, nan], "em_all": [1.0, 1.0, 0.0, 0.0], "em_gold": [1.0, 1.0, 0.0, 0.0],
    }
    for key, values in expected.items():
        assert pq[key] == pytest.approx(values, nan_ok=True), key
    assert (rep["questions"], rep["yes_no_questions"], rep["two_hop_questions"]) == (4, 1, 2)
    assert rep["nll"]["all"]["mean"] == pytest.approx((2.3 * 2 + 3.3 + 5.3) / 4)
    assert rep["nll"]["direct"]["n"] == 3 and rep["nll"]["indirect"]["n"] == 2
    assert rep["gold_below_all"]["mean"] == 1.0 and rep["gold_below_all"]["n"] == 4
    assert rep["indirect_helps"]["mean"] == 1.0 and rep["indirect_helps"]["n"] == 2
    assert rep["em_all"]["mean"] == 0.5  # "The answer is Paris." is read as Paris
    d = rep["differences"]
    assert d["none - direct"]["mean"] == pytest.approx(2.0) and d["all - gold"]["mean"] == pytest.approx(0.3)
    assert d["direct - direct+indirect"]["mean"] == pytest.approx(1.0)
    assert d["no_indirect - all"]["mean"] == pytest.approx(1.0)
    assert rep["signal"] == {"direct": "yes", "indirect": "yes"}
    md = format_report(rep, "scripted")
    assert "| direct gold alone | 3.000 [3.000, 3.000] | 3 |" in md
    assert "indirect passages **yes**" in md and "1 yes/no" in md


def test_a_reader_that_ignores_the_bridge_gets_no_indirect_signal():
    rep = reader_report(ScriptedReader(bridge_gain=0.0), _records(), load_config())
    assert rep["indirect_helps"]["mean"] == 0.0
    assert rep["differences"]["direct - direct+indirect"]["mean"] == pytest.approx(0.0)
    # removing the bridge from everything now only removes nothing the reader uses (-0.0, the filler count is equal)
    assert rep["signal"] == {"direct": "yes", "indirect": "no"}


def test_verdict_rule():
    above, around = {"lo": 0.1, "hi": 0.5, "n": 3}, {"lo": -0.1, "hi": 0.5, "n": 3}
    diffs = {"none - direct": above, "all - gold": around, "direct - direct+indirect": around,
             "no_indirect - all": around}
    assert verdict(diffs) == {"direct": "partly", "indirect": "no"}
    diffs["no_indirect - all"] = diffs["direct - direct+indirect"] = above
    assert verdict(diffs)["indirect"] == "yes"


def test_cli_demo_reader_on_the_embedded_data(tmp_path, capsys):
    """The base demo reader does the hop on the 5-chain setting (no shortcuts): gold beats all, and the bridge is
    needed among the answer-typed distractors (removing it costs nats), though next to the answer passage alone it
    adds little (it copies the one visible town)."""
    five_chains = ["synthetic.n_chains=5", "synthetic.topical_distractors=0", "synthetic.shortcut_fraction=0"]
    cfg = load_config(REPO / "configs" / "demo.yaml", ["synthetic.n_train=4", "synthetic.n_dev=150", *five_chains])
    _, dev = synthetic.write_demo_data(cfg.synthetic, tmp_path / "data", 0)
    rc = cli.main(["reader-report", "--config", str(REPO / "configs" / "demo.yaml"), "--data", str(dev), "--out",
                   str(tmp_path / "out"), "run.progress=false", "reader.name_or_path=gr_train/assets/demo_reader",
                   "reader.passage_max_tokens=8", "eval.batch_size=50", *five_chains])
    assert rc == 0
    rep = json.loads((tmp_path / "out" / "reader_report.json").read_text())[str(dev)]
    assert rep["questions"] == 150 and rep["yes_no_questions"] == 0
    assert rep["gold_below_all"]["mean"] > 0.5  # gold < all in most questions
    assert rep["differences"]["all - gold"]["lo"] > 0
    assert rep["differences"]["no_indirect - all"]["lo"] > 1.0  # the bridge is needed: > 1 nat per token
    assert rep["nll"]["none"]["mean"] > rep["nll"]["all"]["mean"] + 1.0
    assert rep["em_gold"]["mean"] == 1.0 and rep["em_all"]["mean"] > 0.85
    assert rep["signal"]["direct"] == "yes" and rep["signal"]["indirect"] in ("yes", "partly")
    md = (tmp_path / "out" / "reader_report.md").read_text()
    assert "Signal for G-Rerank: direct passages **yes**" in md and md.strip() in capsys.readouterr().out


@pytest.mark.parametrize("family", [["reader.kind=fid_t5"], ["reader.kind=causal_lm",
                                                              "reader.model_config={model_type: llama}"]],
                         ids=["fid_t5", "causal_lm"])
def test_hf_readers_masked_sets_equal_the_passages_read_alone(tmp_path, family):
    """For HF readers the report's hard 0/1 masks over one encoding give the loss of reading only those passages."""
    from gr_train.data import load_records
    from gr_train.models import build_reader

    cfg = load_config(None, [*family, "synthetic.n_dev=6", "data.n_candidates=6", "reader.passage_max_tokens=48"])
    _, dev = synthetic.write_demo_data(cfg.synthetic, tmp_path, 0)
    records = load_records(dev)
    torch.manual_seed(0)
    reader = build_reader(cfg.reader)  # random weights, byte-level tokenizer
    rep = reader_report(reader, records, cfg)
    for b, r in enumerate(records):
        for kind, keep in (("gold", lambda p: p.is_gold), ("all", lambda p: True), ("none", lambda p: False)):
            ps = [(p.title, p.text) for p in r.ctxs[:6] if keep(p)]
            if not ps and kind != "none":  # no gold passage among the first 6 candidates: undefined
                assert math.isnan(rep["per_question"][f"nll_{kind}"][b])
                continue
            inputs = reader.tokenize([r.question], [ps], [r.target_text])
            with torch.no_grad():
                alone = reader.answer_loss(reader.encode_passages(inputs), inputs,
                                           torch.zeros(1, inputs["passage_ids"].shape[1]))
            assert rep["per_question"][f"nll_{kind}"][b] == pytest.approx(alone.item(), abs=1e-4), (kind, b)


def test_two_readers_compared_question_by_question():
    """The scripted reader with the bridge's gain (1 nat) against the one without: the known per-question changes."""
    with_bridge = reader_report(ScriptedReader(bridge_gain=1.0), _records(), load_config())
    without = reader_report(ScriptedReader(bridge_gain=0.0), _records(), load_config())
    d = compare_reports(with_bridge, without)
    # the two two-hop questions lose 1 nat with the gold passages (answer + bridge) and with all; the rest do not move
    assert d["NLL(gold passages)"]["mean"] == pytest.approx(-0.5) and d["NLL(gold passages)"]["n"] == 4
    assert d["NLL(all passages)"]["mean"] == pytest.approx(-0.5)
    assert d["NLL(no passages)"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 4}
    assert d["direct + indirect < direct (share)"]["mean"] == 1.0 and d["direct + indirect < direct (share)"]["n"] == 2
    assert d["NLL direct - direct+indirect"]["mean"] == pytest.approx(1.0)
    assert d["gold < all (share)"]["mean"] == 0.0 and d["EM, gold passages"]["mean"] == 0.0
    md = format_comparison(d, "with", "without")
    assert "| NLL direct - direct+indirect | 1.000 [1.000, 1.000] | 2 |" in md
    assert compare_reports(without, without)["NLL(all passages)"]["mean"] == 0.0
    other = {**without, "question_ids": ["q0", "q1", "qX", "q3"]}
    with pytest.raises(ValueError, match="question 2 is 'q2' here and 'qX' in the baseline"):
        compare_reports(with_bridge, other)
    with pytest.raises(ValueError, match="baseline: no per_question"):
        compare_reports(with_bridge, {k: v for k, v in without.items() if k != "per_question"})


def test_cli_against_a_baseline_report(tmp_path, capsys):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["synthetic.n_train=4", "synthetic.n_dev=12"])
    _, dev = synthetic.write_demo_data(cfg.synthetic, tmp_path / "data", 0)
    args = ["reader-report", "--config", str(REPO / "configs" / "demo.yaml"), "--data", str(dev),
            "run.progress=false", "reader.name_or_path=gr_train/assets/demo_reader", "reader.passage_max_tokens=8"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    first = tmp_path / "a" / "reader_report.json"
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--against", str(first)]) == 0
    rep = json.loads((tmp_path / "b" / "reader_report.json").read_text())[str(dev)]
    assert rep["against"]["baseline"] == str(first)
    diffs = rep["against"]["differences"]
    assert diffs["NLL(all passages)"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 12}  # the same reader: no change
    assert "Paired differences" in (tmp_path / "b" / "reader_report.md").read_text()
    capsys.readouterr()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"elsewhere.jsonl": {}}))
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--against", str(other)]) != 0
    err = capsys.readouterr().err
    assert str(other) in err and "no report for" in err and not (tmp_path / "c").exists()
    other.write_text(json.dumps([str(dev)]))  # a list, not {data file: report}
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--against", str(other)]) != 0
    assert "not a reader_report.json" in capsys.readouterr().err
    other.write_text(json.dumps({str(dev): {"questions": 12}}))  # no question ids
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--against", str(other)]) != 0
    assert "no question_ids" in capsys.readouterr().err and not (tmp_path / "c").exists()
    # the baseline read other questions: refused before the reader runs
    assert cli.main([*args, "--out", str(tmp_path / "d"), "--against", str(first), "eval.max_questions=5"]) != 0
    err = capsys.readouterr().err
    assert "read different questions (5 and 12)" in err and not (tmp_path / "d").exists()
