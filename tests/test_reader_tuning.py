"""Reader fine-tuning for HF readers (objective.name=reader, reader.trainable): the loss falls on a toy set, only the
chosen parameters move (all, the top layers, LoRA adapters), and the saved HF folder reloads frozen and scores
identically."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gr_train import synthetic, train
from gr_train.config import ConfigError, load_config
from gr_train.data import load_records
from gr_train.models import build_reader
from gr_train.objectives import collate
from gr_train.reader import visible_log_mask
from gr_train.reader_tuning import trainable_fraction

CAUSAL = ["reader.kind=causal_lm", "reader.model_config={model_type: llama}"]
T5 = ["reader.kind=fid_t5"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy")
    synthetic.write_demo_data(load_config(None, ["synthetic.n_train=64", "synthetic.n_dev=8"]).synthetic, d, 0)
    return d


def fine_tune(toy: Path, run_dir: Path, *overrides: str, steps: int = 30):
    cfg = load_config(None, [
        "reader.trainable=true", "objective.name=reader", f"data.train_path={toy / 'train.jsonl'}",
        "data.n_candidates=4", "reader.passage_max_tokens=48", "reader.answer_max_tokens=8", f"train.max_steps={steps}",
        "train.micro_batch_size=8", "optim.lr=3e-3", f"run.run_dir={run_dir}", "run.progress=false",
        "train.log_every_steps=10", *overrides])
    losses = []
    out = train.main(cfg, resume=False, on_step=lambda step, scalars: losses.append(scalars["train/loss"]))
    return cfg, out["recipe"].reader, losses


def first_last(losses: list[float]) -> tuple[float, float]:
    return sum(losses[:3]) / 3, sum(losses[-3:]) / 3


def scores(reader, records, n: int = 4):
    """Two-pass answer loss (as the reranker recipes read it) with all passages visible, and greedy answers."""
    reader.eval()
    batch = collate(records, n, None, reader)
    states = reader.encode_passages(batch.reader_inputs)
    with torch.no_grad():
        loss = reader.answer_loss(states, batch.reader_inputs, visible_log_mask(batch.valid))
    return loss, reader.generate(states, batch.reader_inputs, visible_log_mask(batch.valid))


@pytest.mark.parametrize("family", [CAUSAL, T5], ids=["causal_lm", "fid_t5"])
def test_full_fine_tuning_lowers_the_loss_and_the_saved_folder_scores_identically(toy, tmp_path, family):
    cfg, reader, losses = fine_tune(toy, tmp_path / "run", *family)
    first, last = first_last(losses)
    assert last < first - 1.0, losses  # nats per token
    folder = tmp_path / "run" / "final" / "reader"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    reloaded = build_reader(load_config(None, [*family, f"reader.name_or_path={folder}",
                                               "reader.passage_max_tokens=48", "reader.answer_max_tokens=8"]).reader)
    assert not any(p.requires_grad for p in reloaded.parameters()) and not reloaded.training  # loaded frozen
    dev = load_records(toy / "dev.jsonl")
    (loss_a, ans_a), (loss_b, ans_b) = scores(reader, dev), scores(reloaded, dev)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-5)
    assert ans_a == ans_b


def test_top_layers_only_train_the_last_block_and_final_norm(toy, tmp_path):
    cfg = load_config(None, [*CAUSAL, "reader.trainable=true", "reader.train_layers=1"])
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_reader(cfg.reader).state_dict().items()}
    _, reader, losses = fine_tune(toy, tmp_path / "run", *CAUSAL, "reader.train_layers=1")
    assert first_last(losses)[1] < first_last(losses)[0] - 0.2
    changed = {k for k, v in reader.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("model.model.layers.1.", "model.model.norm.")) for k in changed), changed
    assert any(k.startswith("model.model.layers.1.mlp") for k in changed)
    assert 0 < trainable_fraction(reader) < 0.5


def test_lora_trains_adapters_only_and_saves_merged_weights_that_score_identically(toy, tmp_path):
    cfg = load_config(None, [*CAUSAL, "reader.trainable=true"])
    torch.manual_seed(0)
    base = {k: v.clone() for k, v in build_reader(cfg.reader).state_dict().items()}
    _, reader, losses = fine_tune(toy, tmp_path / "run", *CAUSAL, "reader.lora_rank=4", "optim.lr=1e-2")
    assert first_last(losses)[1] < first_last(losses)[0] - 0.2
    trained = reader.state_dict()
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())
    for k, v in trained.items():  # base weights never move (q_proj.weight is now q_proj.base_layer.weight)
        if "lora_" not in k:
            assert torch.equal(v, base[k.replace(".base_layer", "")]), k
    saved = load_file(tmp_path / "run" / "final" / "reader" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in saved)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[q_proj], base[f"model.{q_proj}"])  # the adapters are merged in
    reloaded = build_reader(load_config(None, [*CAUSAL, f"reader.name_or_path={tmp_path / 'run' / 'final' / 'reader'}",
                                               "reader.passage_max_tokens=48", "reader.answer_max_tokens=8"]).reader)
    dev = load_records(toy / "dev.jsonl")
    (loss_a, ans_a), (loss_b, ans_b) = scores(reader, dev), scores(reloaded, dev)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-5)
    assert ans_a == ans_b


def test_bad_tuning_settings_fail_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match="reader.train_layers"):
        load_config(None, ["reader.train_layers=1"])  # demo_fid
    with pytest.raises(ConfigError, match="choose one"):
        load_config(None, [*CAUSAL, "reader.train_layers=1", "reader.lora_rank=4"])
    with pytest.raises(ConfigError, match="reader.lora_rank"):
        load_config(None, [*CAUSAL, "reader.lora_rank=4", "runtime.engine=deepspeed"])
    with pytest.raises(ValueError, match="has 2 layers"):
        build_reader(load_config(None, [*CAUSAL, "reader.trainable=true", "reader.train_layers=3"]).reader)
    with pytest.raises(ValueError, match="reader.lora_targets"):
        build_reader(load_config(None, [*CAUSAL, "reader.trainable=true", "reader.lora_rank=2",
                                        "reader.lora_targets=[nothing_here]"]).reader)
