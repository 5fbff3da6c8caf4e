"""The recipe on tiny models: gradient flow, split invariance, TensorBoard, checkpoints and exact resume."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from gr_train import batching, checkpoint, objectives, synthetic, train
from gr_train.config import load_config
from helpers import POINTWISE_STRAIGHT_THROUGH, nan_loss_on_steps, read_scalars, strip_labels

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path, *overrides):
    data = tmp_path / "data"
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"run.run_dir={tmp_path / 'run'}", "run.progress=false",
        "reranker.kind=cross_encoder", "gumbel.k=2", "gumbel.tau_end=null", "eval.ks=[2, 5]",
        "synthetic.n_train=48", "synthetic.n_dev=16",
        "reader.name_or_path=null", "reader.random_init=true",  # a tiny random reader, on purpose
        "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 32}",
        "train.max_steps=6", "train.micro_batch_size=4", "train.log_every_steps=1", "optim.lr=1e-3",
        *POINTWISE_STRAIGHT_THROUGH, *overrides,
    ])
    if not data.exists():
        synthetic.write_demo_data(cfg.synthetic, data, seed=0)
    cfg.data.train_path, cfg.data.dev_path = str(data / "train.jsonl"), str(data / "dev.jsonl")
    return cfg


def test_gradient_reaches_every_reranker_parameter_and_no_reader_parameter(tmp_path):
    cfg = tiny_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    batch = batching.collate(recipe.train_records[:8], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    noise = train.step_noise(cfg, 0, 8)
    out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0, noise)
    out.loss.backward()
    trainable = [(n, p) for n, p in recipe.reranker.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for reranker parameter {name}"
    assert all(not p.requires_grad and p.grad is None for p in recipe.reader.parameters())
    for key in ("train/mask_entropy", "train/mask_sum", "train/w_std", "train/tau", "train/kappa"):
        assert math.isfinite(out.metrics[key])


def step_gradients(cfg, micro, accum):
    """Gradient of one optimizer step's loss over the same 8 questions split as accum x micro."""
    cfg.train.micro_batch_size, cfg.train.grad_accum_steps = micro, accum
    recipe = train.setup(cfg, resume=False)
    noise = train.step_noise(cfg, 0, micro * accum)
    for i, mb in enumerate(train.micro_batches(recipe, 0)):
        batch = batching.collate(mb, cfg.data.n_candidates, recipe.reranker, recipe.reader)
        out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0,
                                noise[:, i * micro : (i + 1) * micro, : batch.valid.shape[1]])
        recipe.runtime.backward(out.loss)
    return {n: p.grad.clone() for n, p in recipe.reranker.named_parameters() if p.requires_grad}


def test_step_gradient_is_invariant_to_the_micro_batch_split(tmp_path):
    no_dropout = ("reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, "
                  "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 32, "
                  "hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}")
    a = step_gradients(tiny_cfg(tmp_path, no_dropout), 8, 1)
    b = step_gradients(tiny_cfg(tmp_path, no_dropout), 4, 2)
    c = step_gradients(tiny_cfg(tmp_path, no_dropout), 2, 4)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(a[name], c[name], atol=1e-6, rtol=1e-4), name


def test_recipe_trains_logs_and_saves(tmp_path):
    cfg = tiny_cfg(tmp_path)
    before = {n: p.detach().clone() for n, p in train.setup(cfg, resume=False).reranker.named_parameters()}
    out = train.main(cfg, resume=False)
    final = Path(out["final"])
    assert (final / "model.safetensors").is_file() and (final / "config.yaml").is_file()
    assert (final / "reranker" / "gr_train_reranker.json").is_file()
    recipe = out["recipe"]
    changed = [n for n, p in recipe.reranker.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == sum(1 for p in recipe.reranker.parameters() if p.requires_grad)
    scalars = read_scalars(Path(cfg.run.run_dir) / "tb")
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/mask_entropy", "train/mask_sum",
                "train/w_std", "perf/queries_per_s"):
        assert len(scalars[tag]) == cfg.train.max_steps, tag
    assert load_config(Path(cfg.run.run_dir) / "config.yaml") == cfg


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    ref_losses = {}
    cfg = tiny_cfg(tmp_path / "a", "train.save_every_steps=3")
    train.main(cfg, resume=False, on_step=lambda s, sc: ref_losses.__setitem__(s, sc["train/loss"]))

    cfg = tiny_cfg(tmp_path / "b", "train.save_every_steps=3")

    def crash_after_checkpoint(step, scalars):
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train.main(cfg, resume=False, on_step=crash_after_checkpoint)
    assert [p.name for p in checkpoint.list_checkpoints(cfg.run.run_dir)] == ["step-000003"]
    saved = json.loads((Path(cfg.run.run_dir) / "step-000003" / "trainer_state.json").read_text())
    assert saved["timed_steps"] == 3 and saved["train_s"] > 0
    resumed, seconds = {}, []

    def record(step, scalars):
        resumed[step] = scalars["train/loss"]
        seconds.append(scalars["time/step"])

    train.main(cfg, resume=True, on_step=record)
    assert sorted(resumed) == [3, 4, 5]
    for s in resumed:
        assert resumed[s] == pytest.approx(ref_losses[s], abs=1e-6)
    # The run's training time covers every step, the 3 before the interruption included.
    final = json.loads((Path(cfg.run.run_dir) / "final" / "trainer_state.json").read_text())
    assert final["timed_steps"] == 6 and final["train_s"] == pytest.approx(saved["train_s"] + sum(seconds))


def test_a_setting_changed_on_resume_applies_and_is_logged_and_the_saved_config_is_what_trained(tmp_path, caplog):
    """Saved at optim.lr=1e-3 (linear schedule), resumed with optim.lr=2e-3: the optimizer trains at 2e-3 times the
    schedule from the checkpoint's step (the checkpoint's base_lrs used to win), the log names the key, and
    config.yaml holds 2e-3, the value that trained from step 3 on."""
    cfg = tiny_cfg(tmp_path, "train.save_every_steps=3", "optim.lr_schedule=linear", "optim.warmup_steps=0")

    def crash(step, scalars):
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train.main(cfg, resume=False, on_step=crash)
    cfg = tiny_cfg(tmp_path, "train.save_every_steps=3", "optim.lr_schedule=linear", "optim.warmup_steps=0",
                   "optim.lr=2e-3")
    with caplog.at_level("WARNING", logger="gr_train.train"):
        recipe = train.setup(cfg, resume=True)
    assert recipe.start_step == 3
    expected = 2e-3 * (1 - 3 / 6)  # linear to 0 at max_steps=6
    assert [g["lr"] for g in recipe.runtime.optimizer.param_groups] == [pytest.approx(expected, rel=1e-12)]
    assert recipe.runtime.scheduler.base_lrs == [2e-3]
    assert "optim.lr: 0.001 -> 0.002" in caplog.text and "apply from step 3" in caplog.text
    lrs = {}
    train.train(recipe, on_step=lambda s, sc: lrs.__setitem__(s, sc["train/lr"]))
    assert lrs == {s: pytest.approx(2e-3 * (1 - s / 6), rel=1e-12) for s in (3, 4, 5)}
    saved = load_config(Path(cfg.run.run_dir) / "config.yaml")
    assert saved.optim.lr == 2e-3 == recipe.runtime.scheduler.base_lrs[0]
    assert load_config(Path(cfg.run.run_dir) / "step-000003" / "config.yaml").optim.lr == 1e-3  # what trained to 3
    recipe.writer.close()


def test_steps_logged_after_the_checkpoint_are_dropped_on_resume_in_tensorboard_and_jsonl(tmp_path):
    """Killed after logging step 5 (checkpoint at 3), then again after logging step 4 of the resumed run, then
    resumed to the end (8): every tag holds each step once, in scalars.jsonl and in the event files as TensorBoard
    reads them, with the values of the run that finished."""
    cfg = tiny_cfg(tmp_path, "train.max_steps=8", "train.save_every_steps=3", "train.eval_every_steps=3",
                   "optim.warmup_steps=0")

    def crash_at(at):
        def on_step(step, scalars):
            if step == at:  # on_step runs before the step is logged: steps 1..at were logged
                raise Interrupt
        return on_step

    with pytest.raises(Interrupt):
        train.main(cfg, resume=False, on_step=crash_at(5))
    with pytest.raises(Interrupt):
        train.main(cfg, resume=True, on_step=crash_at(4))
    final_losses = {}
    train.main(cfg, resume=True, on_step=lambda s, sc: final_losses.__setitem__(s + 1, sc["train/loss"]))
    assert sorted(final_losses) == [4, 5, 6, 7, 8]
    tb = Path(cfg.run.run_dir) / "tb"
    steps: dict[str, list[int]] = {}
    for line in (tb / "scalars.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in row:
            if key != "step":
                steps.setdefault(key, []).append(row["step"])
    assert steps["train/loss"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert steps["eval/w_std"] == [3, 6]
    assert steps["perf/world_size"] == [0, 3, 8]  # setup (fresh, then the last resume) and cleanup
    assert all(len(v) == len(set(v)) for v in steps.values()), steps
    events = read_scalars(tb)
    assert [s for s, _ in events["train/loss"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [s for s, _ in events["eval/w_std"]] == [3, 6]
    assert [s for s, _ in events["perf/world_size"]] == [0, 3, 8]
    assert all(len({s for s, _ in v}) == len(v) for v in events.values())
    for s in (4, 5, 6, 7, 8):  # the resumed run's values
        assert dict(events["train/loss"])[s] == pytest.approx(final_losses[s], rel=1e-6)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    first = train.save(recipe, "step-000001", 1)
    good = {k: v.clone() for k, v in recipe.reranker.state_dict().items()}
    with torch.no_grad():
        for p in recipe.reranker.parameters():
            p.add_(1.0)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)  # fails after model.safetensors is written
    with pytest.raises(OSError, match="disk full"):
        train.save(recipe, "step-000002", 2)
    with pytest.raises(OSError, match="disk full"):
        train.save(recipe, "step-000001", 1)  # overwriting the existing one fails too
    monkeypatch.undo()
    run_dir = Path(cfg.run.run_dir)
    assert not list(run_dir.glob(".*.tmp-*")), "a failed save left its half-written folder (a full disk stays full)"
    assert checkpoint.latest_checkpoint(cfg.run.run_dir) == first
    fresh = train.setup(cfg, resume=True)
    assert fresh.start_step == 1
    for k, v in fresh.reranker.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_a_save_sweeps_half_written_folders_of_killed_saves(tmp_path):
    cfg = tiny_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    run_dir = Path(cfg.run.run_dir)
    killed = run_dir / ".step-000001.tmp-999999"  # what a save killed midway leaves (another process's pid)
    (killed / "partial").mkdir(parents=True)
    (killed / "partial" / "model.safetensors").write_bytes(b"half")
    set_aside = run_dir / ".final.old-999999"  # a kill between the two renames: the previous checkpoint is here
    set_aside.mkdir()
    train.save(recipe, "step-000002", 2)
    assert not killed.exists()
    assert set_aside.is_dir(), "a set-aside checkpoint must not be swept"
    assert checkpoint.latest_checkpoint(cfg.run.run_dir) == run_dir / "step-000002"


def test_best_checkpoint_follows_the_lowest_label_free_dev_loss_and_survives_resume(tmp_path):
    """train.keep_best: at every dev evaluation the hard-top-k dev loss is logged; best/ holds the reranker of the
    evaluation with the lowest one (loadable), and a resumed run keeps comparing against it."""
    from gr_train.evaluate import hard_topk_loss, score_records
    from gr_train.reranker import Reranker

    cfg = tiny_cfg(tmp_path, "train.max_steps=8", "train.eval_every_steps=2", "train.save_every_steps=4",
                   "optim.lr=3e-3")
    train.main(cfg, resume=False)
    rows = [json.loads(x) for x in (Path(cfg.run.run_dir) / "tb" / "scalars.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval/dev_loss_hard"] for r in rows if "eval/dev_loss_hard" in r}
    assert sorted(evals) == [2, 4, 6, 8]
    assert len(set(evals.values())) > 1  # the loss moved: picking the minimum is a real choice
    best_step = min(evals, key=evals.get)
    best = Path(cfg.run.run_dir) / "best"
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["step"] == best_step and state["best"]["dev_loss_hard"] == pytest.approx(evals[best_step])
    # the saved reranker is the one that was evaluated: recompute its dev loss
    recipe = train.setup(cfg, resume=False)
    reranker = Reranker.load(best / "reranker")
    scores = score_records(reranker, recipe.dev_records, cfg.data.n_candidates)
    assert hard_topk_loss(scores, recipe.reader, recipe.dev_records, cfg) == pytest.approx(evals[best_step], abs=1e-5)
    # a resume from step-000004/ restores the best of the evaluations at steps 2 and 4, not of later ones
    resumed = train.setup(cfg, resume=True)
    early = min((2, 4), key=evals.get)
    assert resumed.start_step == 4 and resumed.best == {"step": early, "dev_loss_hard": evals[early]}


def test_train_cli_on_unlabelled_data_logs_label_free_dev_metrics_and_keeps_best_by_the_dev_loss(tmp_path):
    """`gr-train train` with train and dev files without is_gold (G-Rerank reads no labels): every dev evaluation
    logs answer recall@k and the hard top-k dev loss and no gold metric; best/ is the evaluation with the lowest
    logged eval/dev_loss_hard; the last answer recall@k is evaluate.answer_recall of the final reranker's scores."""
    from gr_train import cli
    from gr_train.config import save_config
    from gr_train.data import load_split
    from gr_train.evaluate import answer_recall, score_records
    from gr_train.ranking import nanmean
    from gr_train.reranker import Reranker

    cfg = tiny_cfg(tmp_path, "train.max_steps=8", "train.eval_every_steps=2", "optim.lr=3e-3")
    cfg.data.train_path = str(strip_labels(cfg.data.train_path, tmp_path / "train_unlabelled.jsonl"))
    cfg.data.dev_path = str(strip_labels(cfg.data.dev_path, tmp_path / "dev_unlabelled.jsonl"))
    save_config(cfg, tmp_path / "unlabelled.yaml")
    assert cli.main(["train", "--config", str(tmp_path / "unlabelled.yaml")]) == 0
    run_dir = Path(cfg.run.run_dir)
    rows = [json.loads(x) for x in (run_dir / "tb" / "scalars.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in rows if "eval/dev_loss_hard" in r}
    assert sorted(evals) == [2, 4, 6, 8]
    for row in evals.values():
        assert {"eval/answer_recall@2", "eval/answer_recall@5", "eval/w_std", "eval/best_step"} <= set(row)
        assert not [k for k in row if k.startswith(("eval/recall@", "eval/ndcg@", "eval/mrr", "eval/coverage@"))]
    losses = {step: row["eval/dev_loss_hard"] for step, row in evals.items()}
    assert len(set(losses.values())) > 1  # picking the minimum is a real choice
    best_step = min(losses, key=losses.get)
    state = json.loads((run_dir / "best" / "trainer_state.json").read_text())
    assert state["step"] == best_step and state["best"]["dev_loss_hard"] == pytest.approx(losses[best_step])
    assert evals[8]["eval/best_step"] == best_step
    dev = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    scores = score_records(Reranker.load(run_dir / "final" / "reranker"), dev, cfg.data.n_candidates)
    for key, values in answer_recall(dev, scores, cfg.eval.ks).items():
        assert evals[8][f"eval/{key}"] == pytest.approx(nanmean(values)[0], abs=1e-9), key
    assert 0 < evals[8]["eval/answer_recall@5"] <= 1


def inject_nan(monkeypatch, recipe, steps: set[int]) -> None:
    """The reader's answer loss becomes NaN during the optimizer steps in `steps` (helpers.nan_loss_on_steps)."""
    step_noise, answer_loss = nan_loss_on_steps(recipe, steps)
    monkeypatch.setattr(train, "step_noise", step_noise)
    monkeypatch.setattr(recipe.reader, "answer_loss", answer_loss)


def test_nonfinite_loss_skips_the_step_counts_it_and_training_goes_on(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    inject_nan(monkeypatch, recipe, {1, 2, 4})
    weights = []
    train.train(recipe, on_step=lambda step, s: weights.append(
        {k: v.clone() for k, v in recipe.reranker.state_dict().items()}))
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(weights, weights[1:])]
    assert same == [True, True, False, True, False]  # steps 1, 2, 4 made no update; 3 and 5 did
    state = recipe.runtime.state_dict()
    assert state["optimizer"]["step"] == 3 and state["scheduler"]["last_epoch"] == 3  # AdamW and LR: 6 - 3 skipped
    logged = read_scalars(Path(cfg.run.run_dir) / "tb")["train/nonfinite_steps"]  # TensorBoard
    assert logged == [(1, 0.0), (2, 1.0), (3, 2.0), (4, 2.0), (5, 3.0), (6, 3.0)]
    assert recipe.nonfinite_steps == 3 and recipe.nonfinite_run == 0


def test_consecutive_nonfinite_steps_stop_the_run_with_the_key_named(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "train.max_nonfinite_steps=3")
    recipe = train.setup(cfg, resume=False)
    inject_nan(monkeypatch, recipe, {1, 2, 3})
    seen = []
    with pytest.raises(FloatingPointError, match=r"step 3: 3 optimizer steps in a row had a non-finite loss on some "
                                                 r"rank and were skipped \(train.max_nonfinite_steps=3\)"):
        train.train(recipe, on_step=lambda step, s: seen.append(step))
    assert seen == [0, 1, 2, 3]


def test_data_drop_no_answer_trains_without_exactly_the_questions_lacking_an_answer_bearing_candidate(tmp_path):
    from gr_train import checks
    from gr_train.data import load_records, save_records

    cfg = tiny_cfg(tmp_path, "data.drop_no_answer=true")
    records = load_records(cfg.data.train_path)
    for r in records[:6:2]:  # questions 0, 2, 4 lose their answer-bearing passages
        r.ctxs = [p for p in r.ctxs if not p.has_answer]
    save_records(records, tmp_path / "train.jsonl")
    cfg.data.train_path = str(tmp_path / "train.jsonl")
    answerless = [r.id for r in records if checks.answerless(r, cfg.data.n_candidates)]
    assert answerless[:3] == [records[0].id, records[2].id, records[4].id]
    recipe = train.setup(cfg, resume=False)
    assert [r.id for r in recipe.train_records] == [r.id for r in records if r.id not in answerless]
    cfg.data.drop_no_answer = False
    assert len(train.setup(cfg, resume=False).train_records) == len(records)


def test_an_elastic_restart_resumes_its_job_whatever_the_first_attempts_flags(tmp_path, monkeypatch):
    """torchrun restarts a job's workers with the same command line: a restart (TORCHELASTIC_RESTART_COUNT > 0) of a
    job launched with --overwrite resumes from the job's own last checkpoint instead of deleting it."""
    from gr_train import cli
    from gr_train.config import save_config

    cfg = tiny_cfg(tmp_path, "train.save_every_steps=3", "run.num_threads=1")
    config = tmp_path / "run.yaml"
    save_config(cfg, config)

    def crash_after_checkpoint(step, scalars):
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):  # the first attempt: killed after its step-3 checkpoint
        train.main(cfg, resume=False, on_step=crash_after_checkpoint)
    saved = (Path(cfg.run.run_dir) / "step-000003" / "model.safetensors").read_bytes()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    started = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda c, resume=True, on_step=None: started.append(resume) or real_main(
        c, resume=resume, on_step=lambda s, sc: started.append(s)))
    assert cli.main(["train", "--config", str(config), "--overwrite"]) == 0
    assert started == [True, 3, 4, 5]  # resumed at step 3, not started again at 0
    assert (Path(cfg.run.run_dir) / "step-000003" / "model.safetensors").read_bytes() == saved
    # with no checkpoint yet, the restart starts the job again (its partial tb/ and config.yaml are its own)
    for p in Path(cfg.run.run_dir).glob("step-*"):
        shutil.rmtree(p)
    shutil.rmtree(Path(cfg.run.run_dir) / "final")
    started.clear()
    assert cli.main(["train", "--config", str(config)]) == 0
    assert started[:2] == [False, 0]
