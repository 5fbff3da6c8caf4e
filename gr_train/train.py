"""The training recipe: setup → train → save_checkpoint → cleanup.

objective.name picks a row of objectives.OBJECTIVES, which says what trains (the reranker, or the reader for
reader pre-training), whether the loss takes the step's Gumbel noise and whether the reranker's score bias is
frozen; the recipe itself has no per-objective cases.
Run: `gr-train train --config configs/demo.yaml [section.key=value ...]`.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from gr_train import checkpoint, checks, gumbel, synthetic, threads
from gr_train.batching import collate
from gr_train.config import RunConfig, save_config
from gr_train.data import load_split
from gr_train.models import build_models
from gr_train.objectives import OBJECTIVES
from gr_train.reader_tuning import save_reader
from gr_train.runtime import Runtime, build_runtime
from gr_train.tensorboard_log import MetricsWriter, peak_rss_mb

log = logging.getLogger("gr_train.train")


@dataclass
class Recipe:
    cfg: RunConfig
    reader: torch.nn.Module
    reranker: torch.nn.Module | None
    trainable: torch.nn.Module
    runtime: Runtime
    writer: MetricsWriter
    train_records: list | None
    dev_records: list | None
    start_step: int = 0
    best: dict | None = None  # {"step", "dev_loss_hard"} of <run_dir>/best/ (train.keep_best)
    nonfinite_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient norm, whole run
    nonfinite_run: int = 0  # ... of them in a row up to the current step (train.max_nonfinite_steps stops the run)
    # Seconds of the optimizer steps (forward, backward, update) and how many steps they cover, over the whole run:
    # saved in every checkpoint, so a resumed run's total includes the part before the interruption (a checkpoint
    # written before these were recorded restarts them at 0).
    train_s: float = 0.0
    timed_steps: int = 0
    # gumbel.kl_coef > 0: the reranker as training started (its initial weights, frozen, eval mode; a plain module on
    # every rank, never partitioned), the KL penalty's reference; None otherwise
    reference: torch.nn.Module | None = None

    @property
    def global_batch(self) -> int:
        """Questions per optimizer step over all ranks (RunConfig.global_batch at this world size)."""
        return self.cfg.global_batch(self.runtime.world_size)


def setup(cfg: RunConfig, resume: bool = True) -> Recipe:
    threads.apply(cfg.run.num_threads)  # before the first parallel op; 0 = automatic (threads.py)
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    runtime = build_runtime(cfg)  # joins the process group under a launcher (runtime.engine=deepspeed)
    objective = OBJECTIVES[cfg.objective.name]
    reader, reranker = build_models(cfg, runtime)
    trainable = reader if objective.trains == "reader" else reranker
    trainable.train()
    if reranker is not None and objective.is_shift_invariant(cfg):
        for p in reranker.shift_parameters():
            p.requires_grad_(False)
    # taken before the engine wraps the reranker and before a checkpoint is loaded: a resumed run's reference is the
    # same initial reranker (built from the config and run.seed again)
    reference = start_copy(reranker) if cfg.objective.name == "gumbel" and cfg.gumbel.kl_coef > 0 else None
    runtime.prepare(trainable, frozen=None if trainable is reader else reader)
    if reference is not None:
        reference.to(runtime.device)
    run_dir = Path(cfg.run.run_dir)
    train_records = load_split(cfg.data.train_path, cfg.data.n_candidates, "train")
    if train_records is None and objective.trains != "reader":
        raise ValueError(f"data.train_path is required for objective.name={cfg.objective.name} (the synthetic "
                         "stream feeds reader pre-training only)")
    if train_records is not None:
        train_records = checks.drop_no_answer(cfg, cfg.data.train_path, train_records)  # data.drop_no_answer
        train_records = checks.drop_short_questions(cfg, cfg.data.train_path, train_records)  # fewer than k
    dev_records = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    last = checkpoint.latest_checkpoint(run_dir) if resume else None
    state = checkpoint.load_checkpoint(last, runtime) if last is not None else None
    # a resume drops what the interrupted run logged after its checkpoint; setup logs the model scalars again
    writer = MetricsWriter(run_dir / "tb", runtime.is_main, resume_step=state["step"] if state else None,
                           relogged=MODEL_SCALARS)
    recipe = Recipe(cfg, reader, reranker, trainable, runtime, writer, train_records, dev_records, reference=reference)
    if state is not None:
        recipe.start_step = state["step"]
        recipe.best = state.get("best")
        recipe.nonfinite_steps = state.get("nonfinite_steps", 0)
        recipe.train_s, recipe.timed_steps = state.get("train_s", 0.0), state.get("timed_steps", 0)
        log.info("resumed from %s at step %d (saved on %s ranks, now %d)", last, recipe.start_step,
                 state.get("world_size", 1), runtime.world_size)
        # One rule for every setting: the new value applies from the resumed step, and the log says which changed.
        changes = [(k, old, new) for k, old, new in checkpoint.config_changes(last, cfg) if k != "run.run_dir"]
        if changes:
            log.warning("resuming with %d setting(s) changed since %s; the new values apply from step %d: %s",
                        len(changes), last.name, recipe.start_step,
                        "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes))
        if state.get("global_batch", recipe.global_batch) != recipe.global_batch:
            log.warning("resuming with a global batch of %d questions, saved with %d: the data order and the "
                        "Gumbel noise differ from the original run (keep micro_batch_size * grad_accum_steps * "
                        "ranks fixed)", recipe.global_batch, state["global_batch"])
    if runtime.is_main:
        save_config(cfg, run_dir / "config.yaml")
    recipe.writer.log(model_scalars(recipe), recipe.start_step)
    return recipe


def start_copy(reranker: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `reranker` as it is now (before any update): no parameter requires grad, eval mode (no
    dropout). The KL penalty's reference (gumbel.kl_coef)."""
    reference = copy.deepcopy(reranker).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


# The key prefixes of model_scalars, which setup logs at the step it starts from.
MODEL_SCALARS = ("model/", "perf/world_size")


def model_scalars(recipe: Recipe) -> dict[str, float]:
    """World size, the reader's parameter elements held by each rank (ZeRO-3 partitioning) and parameter
    checksums of the reader and the trainable module (the frozen reader's must never move). Collective."""
    runtime = recipe.runtime
    local, total = runtime.param_elements(recipe.reader)
    held = runtime.all_gather_object(local)
    scalars = {"perf/world_size": runtime.world_size, "model/reader_param_elements": total,
               **{f"model/reader_param_elements_held/rank{r}": n for r, n in enumerate(held)},
               "model/reader_param_abs_sum": runtime.param_abs_sum(recipe.reader)}
    if recipe.trainable is not recipe.reader:
        scalars["model/trainable_param_abs_sum"] = runtime.param_abs_sum(recipe.trainable)
    return scalars


def truncation_scalars(recipe: Recipe) -> dict[str, float]:
    """reader/truncated_<kind>: what the reader's tokenization cut so far (lengths.Truncations), summed over ranks.
    Collective."""
    counts = recipe.runtime.all_gather_object(dict(recipe.reader.truncations.counts))
    kinds = sorted(set().union(*counts))
    return {f"reader/truncated_{k}": float(sum(c.get(k, 0) for c in counts)) for k in kinds}


def micro_batches(recipe: Recipe, step: int) -> list[list]:
    """This rank's grad_accum_steps micro-batches of optimizer step `step`.

    The step's global batch (micro_batch_size * grad_accum_steps * world_size questions) is a pure function of
    (seed, step), so a resumed run reads exactly the batches an uninterrupted one would (no loader state to
    save); rank r takes rows [r * accum * mb, (r + 1) * accum * mb) of it.
    """
    cfg = recipe.cfg
    mb, accum, per_step = cfg.train.micro_batch_size, cfg.train.grad_accum_steps, recipe.global_batch
    if recipe.train_records is None:  # fresh synthetic questions every step (reader pre-training)
        chosen = next(synthetic.stream(cfg.synthetic, cfg.run.seed, per_step, start_step=step))
    else:
        records = recipe.train_records
        steps_per_epoch = max(1, len(records) // per_step)  # an epoch's tail (< one step) is skipped
        epoch, index = divmod(step, steps_per_epoch)
        order = list(range(len(records)))
        if cfg.data.shuffle:
            random.Random(cfg.run.seed * 1_000_003 + epoch).shuffle(order)
        chosen = [records[i] for i in order[index * per_step : (index + 1) * per_step]]
        while len(chosen) < per_step:  # fewer records than one step needs: wrap around
            chosen += records[: per_step - len(chosen)]
    mine = chosen[recipe.runtime.rank * mb * accum : (recipe.runtime.rank + 1) * mb * accum]
    return [mine[i * mb : (i + 1) * mb] for i in range(accum)]


def config_at_step(cfg: RunConfig, step: int) -> RunConfig:
    """The config that training step `step` runs with: gumbel.k replaced by gumbel.k_curriculum's k at that step
    (gumbel.gumbel_k); cfg itself without a curriculum. Evaluation keeps cfg (the final k)."""
    if not cfg.gumbel.k_curriculum:
        return cfg
    return replace(cfg, gumbel=replace(cfg.gumbel, k=gumbel.gumbel_k(cfg, step)))


def step_noise(cfg: RunConfig, step: int, global_batch: int) -> torch.Tensor | None:
    """Gumbel noise of optimizer step `step` for the whole global batch: [samples * k, global_batch, n_candidates]
    (mask sample s reads rows s * k .. (s + 1) * k - 1).

    A pure function of (seed, step): resume reproduces it without saved state, and every rank and micro-batch
    slices its own rows, so a question's mask does not depend on how the batch is split.
    """
    if not OBJECTIVES[cfg.objective.name].needs_noise or not cfg.gumbel.noise:
        return None
    gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
    draws = cfg.gumbel.sample_count() * cfg.gumbel.k
    return gumbel.sample_gumbel((draws, global_batch, cfg.data.n_candidates), generator=gen)


def train(recipe: Recipe, on_step=None) -> dict:
    """Run steps start_step..max_steps-1. Returns the last logged scalars. `on_step(step, scalars)` is a hook
    for tests (e.g. to record per-step losses)."""
    cfg, runtime = recipe.cfg, recipe.runtime
    objective = OBJECTIVES[cfg.objective.name]
    run_dir = Path(cfg.run.run_dir)
    bar = tqdm(range(recipe.start_step, cfg.train.max_steps), desc=f"train {cfg.objective.name}",
               disable=not (cfg.run.progress and runtime.is_main), initial=recipe.start_step, total=cfg.train.max_steps)
    last: dict = {}
    low_spread_steps = 0
    mb_size, accum = cfg.train.micro_batch_size, cfg.train.grad_accum_steps
    for step in bar:
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        loss_total = 0.0
        skip = False
        step_cfg = config_at_step(cfg, step)
        noise = step_noise(step_cfg, step, recipe.global_batch)
        for i, mb in enumerate(micro_batches(recipe, step)):
            batch = collate(mb, cfg.data.n_candidates, recipe.reranker, recipe.reader,
                            intermediates=objective.intermediate_labels, device=runtime.device)
            rows = (runtime.rank * accum + i) * mb_size
            mb_noise = None if noise is None else noise[:, rows : rows + len(mb), : batch.valid.shape[1]]
            extra = {} if recipe.reference is None else {"reference": recipe.reference}
            out = objective.compute(batch, recipe.reranker, recipe.reader, step_cfg, step, mb_noise, **extra)
            # Every rank learns whether any rank's loss is non-finite (one all-reduce), so all skip the step alike.
            if runtime.mean_across_ranks({"nonfinite": float(not torch.isfinite(out.loss))})["nonfinite"] > 0:
                skip = True
            tb = time.perf_counter()
            # A skipped step still runs every backward (under ZeRO-3 the gradient reduction happens inside it), on
            # a NaN loss: all of the step's gradients are NaN and the engine's step discards them.
            runtime.backward(out.loss * float("nan") if skip else out.loss)
            sums["time/backward"] = sums.get("time/backward", 0.0) + time.perf_counter() - tb
            loss_total += out.loss.item() / accum
            for k, v in out.metrics.items():  # means over the step's micro-batches
                sums[k] = sums.get(k, 0.0) + v / accum
            for k, v in out.timings.items():  # seconds per step: summed over its micro-batches
                sums[k] = sums.get(k, 0.0) + v
        t1 = time.perf_counter()
        stepped = runtime.step(skip=skip)
        t2 = time.perf_counter()
        # fp16 loss-scale overflows are skipped by DeepSpeed as a matter of course; they do not count.
        nonfinite = skip or (stepped["train/step_skipped"] > 0 and cfg.runtime.precision != "fp16")
        recipe.nonfinite_steps += nonfinite
        recipe.nonfinite_run = recipe.nonfinite_run + 1 if nonfinite else 0
        # Means over ranks: each rank holds the same number of questions, so this is the global-batch mean.
        scalars = {**runtime.mean_across_ranks({"train/loss": loss_total, **sums, "time/optimizer": t2 - t1}),
                   **stepped}
        recipe.train_s, recipe.timed_steps = recipe.train_s + t2 - t0, recipe.timed_steps + 1
        scalars.update({"time/step": t2 - t0, "perf/queries_per_s": recipe.global_batch / (t2 - t0),
                        "train/nonfinite_steps": recipe.nonfinite_steps})
        if cfg.gumbel.k_curriculum:
            scalars["train/k"] = float(step_cfg.gumbel.k)
        if "train/w_std" in scalars and scalars["train/w_std"] < cfg.eval.separation_min_std:
            low_spread_steps += 1
        if on_step is not None:
            on_step(step, scalars)
        done = step + 1
        if done % cfg.train.log_every_steps == 0 or done == cfg.train.max_steps or nonfinite:
            rss = runtime.all_gather_object(peak_rss_mb())
            scalars["perf/peak_rss_mb"] = rss[0]
            scalars.update({f"perf/peak_rss_mb/rank{r}": v for r, v in enumerate(rss)})
            scalars.update(truncation_scalars(recipe))
            recipe.writer.log(scalars, done)
            bar.set_postfix(loss=f"{loss_total:.3f}")
        if nonfinite:
            log.warning("step %d skipped: non-finite %s (%d in a row, %d in the run; train.max_nonfinite_steps=%d)",
                        step, "loss" if skip else "gradient norm", recipe.nonfinite_run, recipe.nonfinite_steps,
                        cfg.train.max_nonfinite_steps)
            if recipe.nonfinite_run >= cfg.train.max_nonfinite_steps:
                raise FloatingPointError(
                    f"step {step}: {recipe.nonfinite_run} optimizer steps in a row had a non-finite "
                    f"{'loss' if skip else 'gradient norm'} on some rank and were skipped (train.max_nonfinite_steps="
                    f"{cfg.train.max_nonfinite_steps}); lower optim.lr, check the data, or use runtime.precision=bf16 "
                    "over fp16")
        if cfg.train.eval_every_steps and done % cfg.train.eval_every_steps == 0 and recipe.dev_records:
            eval_during_training(recipe, done)
        if cfg.train.save_every_steps and done % cfg.train.save_every_steps == 0 and done < cfg.train.max_steps:
            save(recipe, f"step-{done:06d}", done)
        last = scalars
    if "train/w_std" in last:
        # A fresh reranker's scores may never separate (docs/design.md#scores-that-never-separate): report it.
        last["train/low_spread_fraction"] = low_spread_steps / max(1, cfg.train.max_steps - recipe.start_step)
        if last["train/w_std"] < cfg.eval.separation_min_std:
            log.warning("reranker scores did not separate: final per-question score std %.4f < %.4f "
                        "(try a larger gumbel.kappa)", last["train/w_std"], cfg.eval.separation_min_std)
    return last


def eval_during_training(recipe: Recipe, step: int) -> dict[str, float]:
    """Dev evaluation at `step`: ranking metrics (when every dev passage is labelled), answer recall@k for eval.ks
    (eval/answer_recall@k, label-free: evaluate.answer_recall, mean over the questions that are not yes/no), the
    score spread and, with train.keep_best, the label-free dev loss (eval/dev_loss_hard): <run_dir>/best/ follows
    the lowest dev loss, labelled dev data or not. Every rank calls it (the reader and the checkpoint are
    collective). Returns the logged scalars."""
    from gr_train.evaluate import answer_recall, hard_topk_losses, ranking_metrics, score_records, score_spread
    from gr_train.ranking import nanmean

    cfg = recipe.cfg
    if recipe.reranker is None:
        return {}
    records = recipe.dev_records[: cfg.eval.max_questions or None]
    # Each rank scores and reads its share of the dev records; the shares are gathered in record order.
    share, real = rank_share(records, recipe.runtime.rank, recipe.runtime.world_size)
    local_step_one: list = []
    local_scores = score_records(recipe.reranker, share, cfg.data.n_candidates, cfg.eval.batch_size,
                                 depth=cfg.selection_depth(), step_one=local_step_one)
    local_losses = (hard_topk_losses(local_scores, recipe.reader, share, cfg, cfg.eval.batch_size).tolist()
                    if cfg.train.keep_best else [])
    parts = recipe.runtime.all_gather_object((local_scores[:real], local_losses[:real], local_step_one[:real]))
    scores = [s for part_scores, _, _ in parts for s in part_scores]
    step_one = [s for _, _, part_step_one in parts for s in part_step_one]
    scalars = {"eval/w_std": score_spread(step_one, cfg.eval.separation_min_std)["w_std_median"]}
    if all(p.is_gold is not None for r in records for p in r.ctxs):
        ranking = ranking_metrics(records, scores, cfg.eval.ks)
        scalars.update({f"eval/{m}" + ("" if kind == "all" else f"_{kind}"): v
                        for kind, row in ranking.items() for m, v in row.items() if m != "questions"})
    free = answer_recall(records, scores, cfg.eval.ks, cfg.eval.answer_normalization)
    scalars.update({f"eval/{m}": nanmean(v)[0] for m, v in free.items()})
    if cfg.train.keep_best:
        loss = sum(x for _, part_losses, _ in parts for x in part_losses) / len(records)
        scalars["eval/dev_loss_hard"] = loss
        if recipe.best is None or loss < recipe.best["dev_loss_hard"]:
            recipe.best = {"step": step, "dev_loss_hard": loss}
            save_reranker(recipe, "best", step)
            if recipe.runtime.is_main:
                log.info("best/: step %d, eval/dev_loss_hard %.4f, the lowest so far (train.keep_best; label-free)",
                         step, loss)
        scalars["eval/best_step"] = recipe.best["step"]
    recipe.writer.log(scalars, step)
    recipe.trainable.train()
    return scalars


def rank_share(records: list, rank: int, world_size: int) -> tuple[list, int]:
    """This rank's contiguous share of `records`, ceil(len / world_size) long on every rank (a short share is padded
    with records from the start, so every rank runs the same number of batches, as ZeRO-3's collective forwards
    need). Returns (share, how many of its records are real: the padding's results are dropped)."""
    per = -(-len(records) // world_size)
    share = records[rank * per : (rank + 1) * per]
    real = len(share)
    return share + records[: per - real], real  # per <= len(records), so the padding is always there


def save(recipe: Recipe, name: str, step: int) -> Path | None:
    """Checkpoint `<run_dir>/<name>/`. Every rank calls it; the path comes back on the main rank, else None."""
    state = {"step": step, "objective": recipe.cfg.objective.name, "global_batch": recipe.global_batch,
             "best": recipe.best, "nonfinite_steps": recipe.nonfinite_steps, "train_s": recipe.train_s,
             "timed_steps": recipe.timed_steps}
    return checkpoint.save_checkpoint(recipe.cfg.run.run_dir, name, recipe.runtime, recipe.cfg, state)


def save_reranker(recipe: Recipe, name: str, step: int) -> Path | None:
    """Checkpoint `<run_dir>/<name>/` with the reranker exported into `<name>/reranker` (gathered whole, never as
    ZeRO shards). Collective; the path comes back on the main rank."""
    path = save(recipe, name, step)
    with recipe.runtime.gathered(recipe.reranker):
        if path is not None:
            recipe.reranker.save(path / "reranker")
    recipe.runtime.barrier()
    return path


def save_checkpoint(recipe: Recipe) -> Path | None:
    """final/: the trainable module's weights, plus an exported model folder (reranker, or reader: a plain HF folder),
    consolidated: the parameters are gathered whole for the export, never written as ZeRO shards."""
    if recipe.reranker is not None and recipe.trainable is recipe.reranker:
        return save_reranker(recipe, "final", recipe.cfg.train.max_steps)
    path = save(recipe, "final", recipe.cfg.train.max_steps)
    with recipe.runtime.gathered(recipe.reader):
        if path is not None:
            save_reader(recipe.reader, path / "reader")  # a folder reader.name_or_path loads
    recipe.runtime.barrier()
    return path


def cleanup(recipe: Recipe) -> None:
    recipe.writer.log(model_scalars(recipe), recipe.cfg.train.max_steps)
    recipe.writer.close()
    recipe.runtime.close()


def main(cfg: RunConfig, resume: bool = True, on_step=None) -> dict:
    recipe = setup(cfg, resume)
    scalars = train(recipe, on_step) if recipe.start_step < cfg.train.max_steps else {}
    path = save_checkpoint(recipe)
    cleanup(recipe)
    return {"final": str(path) if path else None, "last": scalars, "recipe": recipe}

