"""The demo end to end through the CLI: a fast single-process run on a tiny reader, the whole system (Ray Data
preprocessing, 2 DeepSpeed ZeRO-3 ranks, evaluation, TensorBoard, plot, export) at a reduced step count, and the
full README demo (marker slow)."""

import dataclasses
import json
import os
from pathlib import Path

import pytest

from gr_train import cli, synthetic
from gr_train.config import ReaderSection, SyntheticSection, load_config
from gr_train.demo import SHIPPED_READER, dev_curve_points
from gr_train.models import build_reader
from helpers import read_scalars


def test_demo_cli_writes_results_table_and_tensorboard(tmp_path, capsys):
    """--single-process --no-ray: every other stage still runs (evaluation, TensorBoard, plot, export)."""
    reader = build_reader(ReaderSection(kind="demo_fid", passage_max_tokens=8, answer_max_tokens=4,
                                        model_config={"d_model": 32, "n_heads": 2, "d_ff": 64}),
                          synthetic.build_tokenizer(SyntheticSection()))
    reader.save(tmp_path / "reader")
    run = tmp_path / "run"
    rc = cli.main(["demo", "--single-process", "--no-ray", f"run.run_dir={run}",
                   f"demo.reader_path={tmp_path / 'reader'}", "run.progress=false", "train.eval_every_steps=2",
                   "synthetic.n_train=64", "synthetic.n_dev=24", "train.max_steps=4", "train.micro_batch_size=8",
                   "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, "
                   "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 32}"])
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    for name in ("untrained", "trained"):
        for kind in ("all", "direct", "indirect"):
            for k in (2, 5):
                assert 0.0 <= results[name]["ranking"][kind][f"recall@{k}"] <= 1.0
        assert 0.0 <= results[name]["reader"]["em"] <= 1.0
    assert set(results["reader_em"]["two_hop"]) == {"all", "no_indirect", "gold", "direct", "none"}
    assert "R@2 indirect" in (run / "results.md").read_text()
    assert "train/loss" in read_scalars(run / "tb")
    assert (run / "final" / "reranker").is_dir()
    assert results["config"]["ranks"] == 1 and results["config"]["train_path"].endswith("train.jsonl")
    assert (run / "dev_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The curve starts at step 0, the untrained reranker's evaluation; evaluate's hard top-k loss is the quantity
    # the training's dev evaluations log (the trained reranker's equals the last logged one, at the final step).
    points = dev_curve_points(load_config(run / "config.yaml"), results["untrained"])
    assert [p["step"] for p in points] == [0, 2, 4]
    assert points[0]["eval/recall@2_indirect"] == results["untrained"]["ranking"]["indirect"]["recall@2"]  # k=2
    assert points[0]["eval/dev_loss_hard"] == results["untrained"]["loss"]["loss_hard"]
    assert points[-1]["eval/dev_loss_hard"] == pytest.approx(results["trained"]["loss"]["loss_hard"], abs=1e-5)
    assert results["export"]["max_abs_diff"] <= 1e-5 and (run / "export" / "README.md").is_file()
    # The pointwise row (demo.pointwise_row): the same recipe from the conditional reranker's initial weights, with
    # reranker.conditional off; its figures by question kind are those of evaluate on that kind's questions alone.
    from gr_train.checkpoint import param_checksum
    from gr_train.data import load_records
    from gr_train.evaluate import evaluate
    from gr_train.models import build_reader as load_reader
    from gr_train.reranker import Reranker

    start = Reranker.load(run / "untrained" / "reranker")
    base = Reranker.load(run / "pointwise" / "untrained" / "reranker")
    assert start.cfg.conditional and not base.cfg.conditional and param_checksum(start) == param_checksum(base)
    assert not Reranker.load(run / "pointwise" / "final" / "reranker").cfg.conditional
    cfg = load_config(run / "config.yaml")
    dev = load_records(cfg.data.dev_path)
    binding = [r for r in dev if synthetic.question_kind(r) == "binding"]
    counts = {kind: results["by_kind"]["trained"][kind]["questions"] for kind in ("one_hop", "shortcut", "binding")}
    assert sum(counts.values()) == len(dev) == 24 and counts["binding"] == len(binding) > 0
    reader = load_reader(dataclasses.replace(cfg.reader, name_or_path=str(tmp_path / "reader")))
    for row, folder in (("trained", run / "final" / "reranker"), ("pointwise", run / "pointwise" / "final" / "reranker")):
        direct = evaluate(cfg, Reranker.load(folder), reader, binding)
        assert results["by_kind"][row]["binding"]["em"] == pytest.approx(direct["reader"]["em"], abs=1e-6)
        assert results["by_kind"][row]["binding"]["coverage@2"] == pytest.approx(
            direct["ranking"]["all"]["coverage@2"], abs=1e-6)
    diff = results["conditional_minus_pointwise"]["em"]
    assert diff["mean"] == pytest.approx(results["trained"]["reader"]["em"] - results["pointwise"]["reader"]["em"],
                                         abs=1e-6) and diff["lo"] <= diff["mean"] <= diff["hi"]
    table = (run / "results.md").read_text()
    assert "| pointwise |" in table and "| conditional |" in table and "binding (" in table
    out = capsys.readouterr().out
    assert "step 0 and 2 dev evaluations" in out
    assert "Reranker before/after G-Rerank" in out
    assert "[2/8] preprocess" in out and "skipped (--no-ray" in out
    for i, stage in enumerate(("generate", "train", "pointwise", "evaluate", "tensorboard", "plot", "export")):
        assert f"] {stage}" in out, stage


def test_demo_refuses_a_global_batch_that_does_not_split_over_the_ranks(capsys):
    assert cli.main(["demo", "demo.ranks=3"]) == 2  # micro_batch_size 32
    assert "train.micro_batch_size (32) must be a multiple" in capsys.readouterr().err


@pytest.mark.ray
def test_local_ray_has_token_auth_and_stops_on_error():
    ray = pytest.importorskip("ray")
    from ray_jobs import local_ray

    with pytest.raises(ValueError, match="stage failed"):
        with local_ray(num_cpus=1):
            from ray._raylet import AuthenticationMode, get_authentication_mode

            assert get_authentication_mode() == AuthenticationMode.TOKEN and os.environ["RAY_AUTH_TOKEN"]
            assert ray.is_initialized()
            raise ValueError("stage failed")
    assert not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.distributed
@pytest.mark.skipif(not (SHIPPED_READER / "model.safetensors").is_file(), reason="no shipped demo reader")
def test_demo_runs_every_stage_with_ray_and_two_ranks(tmp_path, capsys):
    """`gr-train demo` as the README runs it, with fewer questions and steps: Ray Data writes the shards, 2 ZeRO-3
    ranks train the demo recipe from them (same global batch), and the output folder holds every artefact."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from gr_train.reranker import Reranker

    ray = pytest.importorskip("ray")
    run = tmp_path / "demo"
    assert cli.main(["demo", f"run.run_dir={run}", "run.progress=false", "synthetic.n_train=256",
                     "synthetic.n_dev=48", "train.max_steps=6", "train.eval_every_steps=3"]) == 0
    assert not ray.is_initialized()  # the demo's Ray is stopped

    pre = run / "preprocessed"
    manifest = json.loads((pre / "manifest.json").read_text())
    assert (manifest["input"], manifest["written"], manifest["rejected"]) == (256, 256, 0)
    assert sorted(p.name for p in pre.glob("*.parquet")) == sorted(manifest["files"]) and manifest["files"]
    assert (pre / "rejects.jsonl").read_text() == ""
    import pyarrow.parquet as pq

    table = pq.read_table(pre / manifest["files"][0])
    assert {"reader_passage_ids", "reranker_p_input_ids"} <= set(table.column_names)  # tokenized

    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == 16  # the demo's global batch
    import yaml

    trained_on = yaml.safe_load((run / "config.yaml").read_text())
    assert trained_on["data"]["train_path"] == str(pre) and trained_on["runtime"]["engine"] == "deepspeed"

    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1  # rank 0 only
    tb = read_scalars(run / "tb")
    assert tb["perf/world_size"][0] == (0, 2.0)
    total = tb["model/reader_param_elements"][0][1]
    for r in (0, 1):  # the frozen reader partitioned across the 2 ranks
        assert abs(tb[f"model/reader_param_elements_held/rank{r}"][0][1] / total - 0.5) < 0.05
    assert [s for s, _ in tb["eval/dev_loss_hard"]] == [3, 6]
    assert [s for s, _ in tb["train/loss"]][-1] == 6

    results = json.loads((run / "results.json").read_text())
    for name in ("untrained", "trained"):
        assert results[name]["questions"] == 48
        assert 0.0 <= results[name]["ranking"]["all"]["recall@5"] <= 1.0
    assert results["config"]["ranks"] == 2 and results["config"]["global_batch"] == 32
    assert "| untrained |" in (run / "results.md").read_text()
    assert (run / "dev_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The export: the demo's own fresh-process check, and once more here with plain transformers.
    export = run / "export"
    assert results["export"]["loader"] == "transformers.AutoModel" and results["export"]["max_abs_diff"] <= 1e-5
    assert (export / "README.md").is_file() and (export / "model.safetensors").is_file()
    trained = Reranker.load(run / "final" / "reranker").eval()
    q, p = "creator-of W04", "W04 created-by P08"
    with torch.no_grad():
        w = trained.score([q], [[("", p)]])[0, 0].item()
        tok, model = AutoTokenizer.from_pretrained(export), AutoModel.from_pretrained(export).eval()
        enc = [tok([t], return_tensors="pt") for t in (q, p)]
        emb = [model(**e).last_hidden_state.mean(1) for e in enc]
        assert abs(20.0 * torch.cosine_similarity(*emb).item() - w) < 1e-5
    out = capsys.readouterr().out
    for i, stage in enumerate(("generate", "preprocess", "train", "pointwise", "evaluate", "tensorboard", "plot",
                               "export"), 1):
        assert f"[{i}/8] {stage}" in out, stage
    assert "2 ranks (DeepSpeed ZeRO-3" in out and "from the Parquet shards" in out


def test_cli_reports_bad_config_without_traceback(capsys):
    assert cli.main(["demo", "gumbel.kapa=1"]) == 2
    assert "unknown key 'gumbel.kapa'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED_READER / "model.safetensors").is_file(), reason="no shipped demo reader")
def test_full_demo_raises_gold_recall_and_reader_em(tmp_path):
    """The README demo with its defaults (every stage: Ray Data preprocessing, 240 steps of the conditional
    bi-encoder on 2 ZeRO-3 ranks, the pointwise row in process, ...): G-Rerank, from the LM loss alone, lifts
    gold-passage Recall@2 and the reader's exact match with the greedy selection above the untrained reranker, and
    the conditional reranker beats the pointwise one where only conditioning can tell the answer passage: the
    binding questions (synthetic.question_kind), with a 95% paired interval above zero.

    The reader needs the bridge on the two-hop questions that are not one-hop shortcuts (half of them in the demo's
    setting): removing it costs at least a fifth of two-hop EM."""
    run = tmp_path / "demo"
    assert cli.main(["demo", f"run.run_dir={run}", "run.progress=false"]) == 0
    r = json.loads((run / "results.json").read_text())
    k = r["config"]["k"]
    assert k == 2 and r["config"]["conditional"]
    before, after = r["untrained"], r["trained"]
    assert after["ranking"]["all"][f"recall@{k}"] >= before["ranking"]["all"][f"recall@{k}"] + 0.08
    assert after["reader"]["em"] >= before["reader"]["em"] + 0.1
    assert after["scores"]["separated"]
    binding = r["conditional_minus_pointwise"]["em, binding"]
    assert binding["lo"] > 0.2 and r["by_kind"]["trained"]["binding"]["em"] >= 0.9
    two_hop = r["reader_em"]["two_hop"]
    assert two_hop["all"] >= 0.8 and two_hop["no_indirect"] <= two_hop["all"] - 0.2
