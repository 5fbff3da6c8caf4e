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
from gr_train.batching import collate
from gr_train.objectives import OBJECTIVES
from gr_train.reader import visible_log_mask
from gr_train.reader_tuning import answer_loss_all_visible, passage_dropout, trainable_fraction

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


GPT2 = ["reader.kind=causal_lm", "reader.model_config={model_type: gpt2}"]


@pytest.mark.parametrize("family, target, weight", [
    (CAUSAL, "embed_tokens", "model.embed_tokens.weight"),  # an Embedding: no bias (it used to crash the merge)
    (CAUSAL, "lm_head", "lm_head.weight"),
    (GPT2, "wte", "transformer.wte.weight"),  # tied to lm_head (tie_word_embeddings): saved untied
    (GPT2, "lm_head", "lm_head.weight"),
    (GPT2, "c_fc", "transformer.h.0.mlp.c_fc.weight"),  # with a bias
    (T5, "lm_head", "lm_head.weight"),  # tied to the shared embeddings: saved untied
], ids=["llama-embed_tokens", "llama-lm_head", "gpt2-wte-tied", "gpt2-lm_head-tied", "gpt2-c_fc", "t5-lm_head-tied"])
def test_every_lora_target_peft_adapts_is_merged_saved_and_reloads_with_the_trained_loss(toy, tmp_path, family,
                                                                                         target, weight):
    cfg = load_config(None, [*family, "reader.trainable=true"])
    torch.manual_seed(0)
    base = build_reader(cfg.reader).model.state_dict()
    _, reader, _ = fine_tune(toy, tmp_path / "run", *family, "reader.lora_rank=4", f"reader.lora_targets=[{target}]",
                             "optim.lr=1e-2", steps=8)
    folder = tmp_path / "run" / "final" / "reader"
    saved = load_file(folder / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in saved)
    assert (saved[weight] - base[weight]).abs().max() > 1e-4  # the adapter is merged in
    reloaded = build_reader(load_config(None, [*family, f"reader.name_or_path={folder}", "reader.passage_max_tokens=48",
                                               "reader.answer_max_tokens=8"]).reader)
    dev = load_records(toy / "dev.jsonl")
    (loss_a, ans_a), (loss_b, ans_b) = scores(reader, dev), scores(reloaded, dev)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-5)
    assert ans_a == ans_b


@pytest.mark.parametrize("family, target, expected", [
    (CAUSAL, "norm", "module model.norm (LlamaRMSNorm) is not a layer LoRA can adapt"),
    (CAUSAL, "mlp", "module model.layers.0.mlp (LlamaMLP) is not a layer LoRA can adapt"),
    (GPT2, "ln_f", "module transformer.ln_f (LayerNorm) is not a layer LoRA can adapt"),
    (CAUSAL, "wte", "Target modules {'wte'} not found"),
    # T5's encoder and decoder read the shared embeddings without the adapter (the adapter would never train)
    (T5, "shared", "module shared (Embedding) shares its weight with encoder.embed_tokens.weight"),
    (T5, "embed_tokens", "module encoder.embed_tokens (Embedding) shares its weight with shared.weight"),
])
def test_a_lora_target_that_cannot_be_merged_is_refused_before_training_naming_the_key_and_module(
        toy, tmp_path, capsys, family, target, expected):
    from gr_train import cli

    argv = ["train", "objective.name=reader", "reader.trainable=true", f"data.train_path={toy / 'train.jsonl'}",
            "reader.lora_rank=4", f"reader.lora_targets=[{target}]", *family, f"run.run_dir={tmp_path / 'run'}",
            "run.num_threads=1", "data.n_candidates=4", "eval.ks=[2]", "reader.passage_max_tokens=48"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gr-train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"reader.lora_targets=['{target}']" in lines[0] and expected in lines[0], lines[0]
    assert not list((tmp_path / "run").glob("step-*")) and not (tmp_path / "run" / "final").exists()


def test_bad_tuning_settings_fail_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match="reader.train_layers"):
        load_config(None, ["reader.train_layers=1"])  # demo_fid
    with pytest.raises(ConfigError, match="choose one"):
        load_config(None, [*CAUSAL, "reader.train_layers=1", "reader.lora_rank=4"])
    with pytest.raises(ConfigError, match="reader.lora_rank"):
        load_config(None, [*CAUSAL, "reader.lora_rank=4", "runtime.engine=deepspeed"])
    with pytest.raises(ConfigError, match=r"reader.passage_dropout: must be in \[0, 1\)"):
        load_config(None, [*CAUSAL, "objective.name=reader", "reader.trainable=true", "reader.passage_dropout=1.0"])
    with pytest.raises(ConfigError, match="reader.passage_dropout: for HF reader fine-tuning"):
        load_config(None, [*CAUSAL, "reader.passage_dropout=0.5"])  # objective.name=gumbel
    with pytest.raises(ConfigError, match="reader.passage_dropout: for HF reader fine-tuning"):
        load_config(None, ["objective.name=reader", "reader.trainable=true", "reader.passage_dropout=0.5"])  # demo_fid
    with pytest.raises(ValueError, match="has 2 layers"):
        build_reader(load_config(None, [*CAUSAL, "reader.trainable=true", "reader.train_layers=3"]).reader)
    with pytest.raises(ValueError, match="reader.lora_targets"):
        build_reader(load_config(None, [*CAUSAL, "reader.trainable=true", "reader.lora_rank=2",
                                        "reader.lora_targets=[nothing_here]"]).reader)


def test_passage_dropout_hides_a_p_share_of_valid_candidates_and_never_all_of_a_question():
    n_q, n = 2000, 10
    valid = torch.ones(n_q, n, dtype=torch.bool)
    valid[::2, 7:] = False  # every other question has 7 candidates and 3 padded slots
    ids = [f"q{i}" for i in range(n_q)]
    visible = passage_dropout(valid, 0.5, seed=0, step=3, ids=ids)
    assert not (visible & ~valid).any()  # padding never shows
    assert visible.any(1).all()
    hidden = (valid & ~visible).sum().item() / valid.sum().item()
    assert 0.47 < hidden < 0.53, hidden  # each valid candidate hidden with probability 0.5
    # p close to 1: most questions would lose every passage; each keeps exactly one, its largest draw
    few = passage_dropout(valid, 0.99, seed=0, step=3, ids=ids)
    assert few.any(1).all() and not (few & ~valid).any()
    assert (few.sum(1) == 1).float().mean() > 0.8
    assert passage_dropout(valid, 0.0, seed=0, step=3, ids=ids) is valid


def test_passage_dropout_is_a_function_of_seed_step_and_question_not_of_the_batch():
    valid = torch.ones(6, 10, dtype=torch.bool)
    ids = [f"q{i}" for i in range(6)]
    whole = passage_dropout(valid, 0.5, seed=1, step=7, ids=ids)
    order = [4, 0, 5, 2]  # another micro-batch holding some of the same questions
    part = passage_dropout(valid[order], 0.5, seed=1, step=7, ids=[ids[i] for i in order])
    assert torch.equal(part, whole[order])
    assert not torch.equal(whole, passage_dropout(valid, 0.5, seed=1, step=8, ids=ids))
    assert not torch.equal(whole, passage_dropout(valid, 0.5, seed=2, step=7, ids=ids))


def test_reader_fine_tuning_with_passage_dropout_reads_only_the_visible_candidates(toy):
    cfg = load_config(None, [*CAUSAL, "objective.name=reader", "reader.trainable=true", "reader.passage_dropout=0.5",
                             "reader.passage_max_tokens=48"])
    torch.manual_seed(0)
    reader = build_reader(cfg.reader)
    records = load_records(toy / "train.jsonl")[:4]
    batch = collate(records, 4, None, reader)
    out = OBJECTIVES["reader"].compute(batch, None, reader, cfg, 5, None)
    visible = passage_dropout(batch.valid, 0.5, cfg.run.seed, 5, [r.id for r in records])
    assert not torch.equal(visible, batch.valid)  # some candidates are hidden at this step
    torch.testing.assert_close(out.loss, answer_loss_all_visible(reader, batch.reader_inputs, visible).mean())
    all_visible = answer_loss_all_visible(reader, batch.reader_inputs, batch.valid).mean()
    assert abs(out.loss.item() - all_visible.item()) > 1e-4
    assert out.metrics["train/visible_passages"] == pytest.approx(visible.sum(1).float().mean().item())
