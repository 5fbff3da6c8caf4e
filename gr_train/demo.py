"""The demo: the whole system in miniature on the embedded multi-hop data, on CPU in a few minutes.

Stages, each with a progress bar and a one-line summary (`gr-train demo`; configs/demo.yaml):
  1 generate     the embedded train/dev questions → <run_dir>/data/{train,dev}.jsonl
  2 preprocess   Ray Data on a local, token-authenticated Ray started (and stopped) here: the training questions
                 with their own candidates → tokenized Parquet shards, manifest.json, rejects.jsonl
                 (<run_dir>/preprocessed; ray_jobs/preprocess.py)
  3 train        G-Rerank from the frozen demo reader's loss: demo.ranks DeepSpeed ZeRO-3 ranks (CPU: gloo)
                 launched here with torchrun, the reader partitioned across them, reading the Parquet shards;
                 the per-rank micro-batch is train.micro_batch_size / ranks, so the global batch and the recipe
                 are the single-process ones. configs/demo.yaml trains a conditional reranker
                 (reranker.conditional: k passages chosen one at a time, each step given the passages chosen before
                 it) with the score-function estimator, at k=2
  4 pointwise    the same recipe on the pointwise reranker (reranker.conditional=false: each passage scored alone)
                 from the same initial weights, in this process, for the row beside it (demo.pointwise_row;
                 skipped when the reranker is pointwise)
  5 evaluate     hard top-k (greedy selection for a conditional reranker) before and after training, and the
                 pointwise row: every metric over all dev questions and the two-hop ones, EM and coverage@k by
                 question kind (synthetic.question_kind), the conditional − pointwise differences with 95% paired
                 bootstrap intervals → results.json, results.md and the printed tables
  6 tensorboard  <run_dir>/tb: rank 0's events (world size, losses, dev metrics over steps)
  7 plot         <run_dir>/dev_curves.png: dev recall@k and the label-free dev loss over steps
  8 export       <run_dir>/export: the trained reranker as a plain HF folder with its model card, loaded in a fresh
                 process with transformers (sentence_transformers.CrossEncoder for a cross-encoder) and checked
                 to score as in training to 1e-5
`--single-process` trains in this process on the local engine; `--no-ray` skips stage 2 (training reads the
generated JSONL).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from gr_train.config import ConfigError, RunConfig, load_config, save_config

log = logging.getLogger("gr_train.demo")

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SHIPPED_READER = PACKAGE_DIR / "assets" / "demo_reader_topical"  # configs/demo.yaml's reader
READER_CONFIG = REPO_DIR / "configs" / "demo_reader_topical.yaml"
STAGES = ("generate", "preprocess", "train", "pointwise", "evaluate", "tensorboard", "plot", "export")
EXPORT_TOLERANCE = 1e-5  # max |w_exported - w_training| accepted by the export check


def reader_folder(cfg: RunConfig) -> Path:
    """The frozen demo reader to use: the shipped (or configured) one, trained first when absent or asked for."""
    from gr_train import train

    path = Path(cfg.demo.reader_path) if cfg.demo.reader_path else SHIPPED_READER
    if (path / "model.safetensors").is_file() and not cfg.demo.train_reader:
        return path
    rcfg = load_config(cfg.demo.reader_config or READER_CONFIG,
                       [f"run.run_dir={Path(cfg.run.run_dir) / 'reader'}", f"run.progress={cfg.run.progress}"])
    log.info("training the demo reader (%d steps) into %s", rcfg.train.max_steps, rcfg.run.run_dir)
    out = train.main(rcfg, resume=True)
    return Path(out["final"]) / "reader"


def check(cfg: RunConfig, single_process: bool) -> int:
    """Ranks to train on (1 with single_process). ConfigError, before torch is imported, when the global batch
    cannot be split evenly over demo.ranks or eval.ks lacks gumbel.k."""
    ranks = 1 if single_process else cfg.demo.ranks
    if cfg.gumbel.k not in cfg.eval.ks:
        raise ConfigError(f"eval.ks: the demo reports recall and coverage at the training k, gumbel.k="
                          f"{cfg.gumbel.k}; add it to eval.ks (got {cfg.eval.ks})")
    if ranks < 1:
        raise ConfigError(f"demo.ranks: must be >= 1, got {ranks}")
    if cfg.train.micro_batch_size % ranks:
        raise ConfigError(f"demo.ranks={ranks}: train.micro_batch_size ({cfg.train.micro_batch_size}) must be a "
                          "multiple of it (each rank takes micro_batch_size / ranks questions of every micro-batch)")
    return ranks


class Stages:
    """Numbered stages: a tqdm bar per stage (its units of work) and a one-line summary when it ends."""

    def __init__(self, names: tuple[str, ...], progress: bool):
        self.names, self.progress, self.seconds = names, progress, {}

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "it"):
        """Yields (bar, summary): advance `bar`; append the stage's one-line summary to `summary` (a list)."""
        from tqdm import tqdm

        i = self.names.index(name) + 1
        label = f"[{i}/{len(self.names)}] {name}"
        summary: list[str] = []
        t0 = time.perf_counter()
        with tqdm(total=total, desc=label, unit=unit, disable=not self.progress, leave=False,
                  dynamic_ncols=True) as bar:
            yield bar, summary
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{label:<18} {' '.join(summary)} ({self.seconds[name]:.1f} s)", flush=True)

    def skipped(self, name: str, why: str) -> None:
        i = self.names.index(name) + 1
        print(f"{f'[{i}/{len(self.names)}] {name}':<18} skipped ({why})", flush=True)


def run(cfg: RunConfig, single_process: bool = False, use_ray: bool = True) -> dict:
    """Every stage of the system on the demo data (module docstring); returns results.json's content.

    Raises ConfigError (bad demo settings), RuntimeError (a failed stage: the training launcher's exit code and
    log tail, or exported scores that differ from training's by more than EXPORT_TOLERANCE)."""
    ranks = check(cfg, single_process)
    from gr_train import threads

    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # This process: the thread policy for one process (evaluation, single-process training); the ranks get theirs.
    nthreads = threads.apply(cfg.run.num_threads, ranks=1)
    quiet_libraries()
    stages = Stages(STAGES, cfg.run.progress)
    t_start = time.perf_counter()

    train_path, dev_path = generate(cfg, run_dir, stages)
    if use_ray:
        train_source = preprocess(cfg, train_path, run_dir, stages)
    else:
        stages.skipped("preprocess", "--no-ray: training reads the generated JSONL")
        train_source = train_path
    cfg.data.train_path, cfg.data.dev_path = str(train_source), str(dev_path)
    cfg.reader.name_or_path = str(reader_folder(cfg))
    cfg.reader.kind = "demo_fid"

    results = evaluate_and_train(cfg, ranks, nthreads, stages)
    tensorboard_summary(cfg, ranks, stages)
    plot_dev_curves(cfg, stages, results["untrained"])
    results["export"] = export(cfg, stages)
    results["stages_s"] = {**stages.seconds, "total": round(time.perf_counter() - t_start, 1)}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print_results(cfg, results)
    return results


def quiet_libraries() -> None:
    """One progress bar per stage: transformers' per-load bars and tensorboard's INFO lines off."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("tensorboard").setLevel(logging.WARNING)


# -- stages -------------------------------------------------------------------------------------------------------


def generate(cfg: RunConfig, run_dir: Path, stages: Stages) -> tuple[Path, Path]:
    from gr_train import synthetic

    out = run_dir / "data"
    with stages.stage("generate", total=1, unit="split pair") as (bar, summary):
        paths = synthetic.write_demo_data(cfg.synthetic, out, cfg.run.seed)
        bar.update()
        summary.append(f"{cfg.synthetic.n_train} train / {cfg.synthetic.n_dev} dev questions "
                       f"({cfg.synthetic.n_chains} chains, {cfg.data.n_candidates} candidates each) → {out}")
    return paths


def preprocess(cfg: RunConfig, train_path: Path, run_dir: Path, stages: Stages) -> Path:
    """Ray Data on a local Ray (ray_jobs.local_ray: token authentication, stopped at the end, error included):
    the training questions with their own candidates → tokenized Parquet shards in <run_dir>/preprocessed."""
    from ray_jobs import local_ray

    out = run_dir / "preprocessed"
    pcfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(
        cfg.preprocess, candidates="input", questions_path=str(train_path), output_dir=str(out)))
    pcfg.reader = dataclasses.replace(cfg.reader, name_or_path=str(reader_folder(cfg)), kind="demo_fid")
    workers = pcfg.preprocess.num_workers
    with stages.stage("preprocess", total=1, unit="job") as (bar, summary):
        bar.set_postfix_str(f"starting Ray ({workers} workers)")
        with local_ray(num_cpus=max(2, workers), dashboard=cfg.demo.dashboard):
            from ray_jobs import preprocess as job

            bar.set_postfix_str("Ray Data running")
            manifest = job.run(pcfg, progress=cfg.run.progress)
        bar.update()
        summary.append(f"{manifest['written']} rows → {len(manifest['files'])} Parquet shards, "
                       f"{manifest['rejected']} rejected, {workers} Ray Data workers, token auth on, "
                       f"Ray stopped → {out} (manifest.json, rejects.jsonl)")
    return out


def evaluate_and_train(cfg: RunConfig, ranks: int, nthreads: int, stages: Stages) -> dict:
    """Stages 3 (train) and 4 (evaluate). The untrained reranker is built as `gr-train train` builds it (same seed)
    and saved; the ranks train from exactly it, and both it and the trained one (final/reranker) are evaluated
    with the same frozen reader on the dev questions."""
    import torch

    from gr_train import synthetic
    from gr_train.checkpoint import param_checksum
    from gr_train.data import load_split
    from gr_train.evaluate import evaluate, reader_reference
    from gr_train.models import build_models
    from gr_train.reranker import Reranker

    run_dir = Path(cfg.run.run_dir)
    torch.manual_seed(cfg.run.seed)  # as train.setup: the same untrained reranker as a plain `gr-train train`
    reader, untrained = build_models(cfg)
    start = run_dir / "untrained" / "reranker"
    untrained.save(start)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)  # a fresh run (--no-resume): no events of an earlier one

    pointwise = pointwise_recipe(cfg)
    if pointwise is not None:  # the same initial weights: a conditional reranker's step 1 is its base reranker
        torch.manual_seed(cfg.run.seed)
        _, base = build_models(pointwise)
        if param_checksum(base) != param_checksum(untrained):
            raise RuntimeError("demo: the pointwise reranker does not start from the conditional one's weights")
        base.save(run_dir / "pointwise" / "untrained" / "reranker")
        pointwise.reranker.name_or_path = str(run_dir / "pointwise" / "untrained" / "reranker")

    tcfg = dataclasses.replace(cfg, reranker=dataclasses.replace(cfg.reranker, name_or_path=str(start)))
    with stages.stage("train", total=cfg.train.max_steps, unit="step") as (bar, summary):
        if ranks == 1:
            last = train_in_process(tcfg)
            bar.update(cfg.train.max_steps)
            how = f"1 process (local engine, {nthreads} thread{'s' * (nthreads > 1)})"
        else:
            last, per_rank = train_on_ranks(tcfg, ranks, bar)
            how = (f"{ranks} ranks (DeepSpeed ZeRO-3, {'nccl' if torch.cuda.is_available() else 'gloo'}, "
                   f"{per_rank} thread{'s' * (per_rank > 1)} each, reader partitioned)")
        data = "Parquet shards" if Path(cfg.data.train_path).is_dir() else "JSONL"
        summary.append(f"G-Rerank {cfg.train.max_steps} steps on {how}, global batch {cfg.global_batch(1)} from the "
                       f"{data}, final loss {last.get('train/loss', float('nan')):.3f} → {run_dir / 'final'}")

    if pointwise is None:
        why = "demo.pointwise_row=false" if cfg.reranker.conditional else "the trained reranker is pointwise"
        stages.skipped("pointwise", why)
    else:
        with stages.stage("pointwise", total=cfg.train.max_steps, unit="step") as (bar, summary):
            plast = train_in_process(pointwise)
            bar.update(cfg.train.max_steps)
            summary.append(f"the same recipe on the pointwise reranker from the same weights, 1 process ({nthreads} "
                           f"thread{'s' * (nthreads > 1)}), final loss {plast.get('train/loss', float('nan')):.3f} → "
                           f"{Path(pointwise.run.run_dir) / 'final'}")

    dev = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    if cfg.eval.max_questions:
        dev = dev[: cfg.eval.max_questions]
    two_hop = [r for r in dev if r.intermediate]
    rows = {"untrained": untrained, "trained": Reranker.load(run_dir / "final" / "reranker")}
    if pointwise is not None:
        rows["pointwise"] = Reranker.load(Path(pointwise.run.run_dir) / "final" / "reranker")
    results: dict = {}
    with stages.stage("evaluate", total=2 + 2 * len(rows), unit="run") as (bar, summary):
        for name, records in (("all_questions", dev), ("two_hop", two_hop)):
            results.setdefault("reader_em", {})[name] = reader_reference(reader, records)
            bar.update()
        per_question = {}
        for name, reranker in rows.items():
            ecfg = pointwise if name == "pointwise" else cfg
            results[name] = evaluate(ecfg, reranker, reader, dev, per_question=True)
            per_question[name] = results[name].pop("per_question")
            bar.update()
            results[f"{name}_two_hop"] = evaluate(ecfg, reranker, reader, two_hop)
            bar.update()
        k = cfg.gumbel.k
        # per question, for intervals over seeds (bench/demo_spread.py): EM and coverage@k of each row, and its kind
        results["per_question"] = {name: {m: v[m] for m in ("em", f"coverage@{k}")}
                                   for name, v in per_question.items()}
        results["question_kinds"] = [synthetic.question_kind(r) for r in dev]
        results["by_kind"] = by_kind(cfg, dev, per_question)
        if pointwise is not None:
            results["conditional_minus_pointwise"] = paired_differences(cfg, dev, per_question)
        results["training"] = {k: v for k, v in last.items() if k.startswith(("train/", "perf/", "time/"))}
        results["config"] = {"estimator": cfg.gumbel.estimator, "k": cfg.gumbel.k, "tau": cfg.gumbel.tau,
                             "tau_end": cfg.gumbel.tau_end, "synthetic": dataclasses.asdict(cfg.synthetic),
                             "kappa": cfg.gumbel.kappa, "samples": cfg.gumbel.sample_count(),
                             "reranker": cfg.reranker.kind, "conditional": cfg.reranker.conditional,
                             "ranks": ranks, "global_batch": cfg.global_batch(1), "max_steps": cfg.train.max_steps,
                             "reader": cfg.reader.name_or_path, "train_path": cfg.data.train_path}
        write_tables(cfg, results)
        trained = "conditional" if cfg.reranker.conditional else "trained"
        summary.append(f"{'greedy selection' if cfg.reranker.conditional else 'hard top-k'} on {len(dev)} dev "
                       f"questions: untrained {headline(cfg, results['untrained'])}; "
                       + (f"pointwise {headline(cfg, results['pointwise'])}; " if "pointwise" in results else "")
                       + f"{trained} {headline(cfg, results['trained'])} → {run_dir / 'results.json'}, results.md")
    return results


def pointwise_recipe(cfg: RunConfig) -> RunConfig | None:
    """The pointwise row's recipe (stage 4): cfg with reranker.conditional=false, its run folder
    <run_dir>/pointwise, on the local engine in this process; None when cfg's reranker is pointwise or
    demo.pointwise_row is false."""
    if not (cfg.reranker.conditional and cfg.demo.pointwise_row):
        return None
    return dataclasses.replace(
        cfg, reranker=dataclasses.replace(cfg.reranker, conditional=False),
        run=dataclasses.replace(cfg.run, run_dir=str(Path(cfg.run.run_dir) / "pointwise")),
        runtime=dataclasses.replace(cfg.runtime, engine="local"))


def by_kind(cfg: RunConfig, dev: list, per_question: dict[str, dict]) -> dict:
    """{row: {kind: {"questions", "em", f"coverage@{k}"}}} over the dev questions of each synthetic.question_kind
    (one_hop, shortcut, binding), k = gumbel.k. The binding questions are where a pointwise reranker can only
    guess which answer-typed passage follows the bridge."""
    from gr_train import synthetic

    kinds = [synthetic.question_kind(r) for r in dev]
    k = cfg.gumbel.k
    out: dict = {}
    for name, values in per_question.items():
        for kind in ("one_hop", "shortcut", "binding"):
            idx = [i for i, x in enumerate(kinds) if x == kind]
            mean = (lambda key: sum(values[key][i] for i in idx) / len(idx) if idx else float("nan"))
            out.setdefault(name, {})[kind] = {"questions": len(idx), "em": mean("em"),
                                              f"coverage@{k}": mean(f"coverage@{k}")}
    return out


def paired_differences(cfg: RunConfig, dev: list, per_question: dict[str, dict]) -> dict:
    """Conditional − pointwise (the trained rows, same dev questions): EM and coverage@k over all questions and
    over the binding ones, each {"mean", "lo", "hi", "n"} (stats.paired_bootstrap, 95%, over questions)."""
    import torch

    from gr_train import synthetic
    from gr_train.stats import paired_bootstrap

    binding = [synthetic.question_kind(r) == "binding" for r in dev]
    k = cfg.gumbel.k
    out = {}
    for metric in ("em", f"coverage@{k}"):
        a, b = (torch.tensor(per_question[row][metric], dtype=torch.float64) for row in ("trained", "pointwise"))
        out[metric] = paired_bootstrap(a[None], b[None])
        sel = torch.tensor(binding)
        out[f"{metric}, binding"] = paired_bootstrap(a[sel][None], b[sel][None])
    return out


def headline(cfg: RunConfig, result: dict) -> str:
    k = cfg.gumbel.k
    rank = result["ranking"]
    return (f"R@{k} {rank['all'][f'recall@{k}']:.3f} (indirect {rank['indirect'][f'recall@{k}']:.3f}), "
            f"coverage@{k} {rank['all'][f'coverage@{k}']:.3f}, EM@{cfg.reader_k()} {result['reader']['em']:.3f}")


def row_names(results: dict) -> dict[str, str]:
    """{results key: table label}: untrained, pointwise and conditional when the demo trained both, else untrained
    and trained."""
    if "pointwise" in results:
        return {"untrained": "untrained", "pointwise": "pointwise", "trained": "conditional"}
    return {"untrained": "untrained", "trained": "trained"}


def write_tables(cfg: RunConfig, results: dict) -> None:
    """results.json, and results.md: the metric table (all dev questions, then the two-hop ones), the table by
    question kind and the conditional − pointwise intervals."""
    from gr_train.evaluate import format_table

    run_dir = Path(cfg.run.run_dir)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    names = row_names(results)
    table = format_table({**{label: results[key] for key, label in names.items()},
                          **{f"{label}, two-hop": results[f"{key}_two_hop"] for key, label in names.items()}},
                         cfg.eval.ks)
    k = cfg.gumbel.k
    kinds = results["by_kind"][next(iter(names))]
    lines = ["", f"By question kind (EM@{cfg.reader_k()} / coverage@{k}: every needed fact in the top {k}):", "",
             "| reranker | " + " | ".join(f"{kind.replace('_', '-')} ({kinds[kind]['questions']})"
                                          for kind in kinds) + " |",
             "|---" * (len(kinds) + 1) + "|"]
    for key, label in names.items():
        cells = [f"{v['em']:.3f} / {v[f'coverage@{k}']:.3f}" for v in results["by_kind"][key].values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    diff = results.get("conditional_minus_pointwise")
    if diff:
        lines += ["", "Conditional − pointwise (95% paired bootstrap over the dev questions): " + "; ".join(
            f"{name} {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for name, v in diff.items()) + "."]
    (run_dir / "results.md").write_text(table + "\n" + "\n".join(lines) + "\n")


def train_in_process(cfg: RunConfig) -> dict:
    """The recipe in this process on the local engine; returns the last logged scalars."""
    from gr_train import train

    return train.main(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, progress=False)), resume=False)["last"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_ranks(cfg: RunConfig, ranks: int, bar) -> tuple[dict, int]:
    """`ranks` DeepSpeed ZeRO-3 ranks on this machine (torchrun, its own process group), each running the recipe
    on micro_batch_size / ranks questions per micro-batch. Their output goes to <run_dir>/train.log; the bar
    follows rank 0's logged steps. Returns (last logged training scalars, threads per rank). RuntimeError with
    the log's tail when the launcher fails; the ranks are killed if this process is interrupted."""
    from gr_train import threads

    run_dir = Path(cfg.run.run_dir)
    rcfg = dataclasses.replace(
        cfg, runtime=dataclasses.replace(cfg.runtime, engine="deepspeed"),
        train=dataclasses.replace(cfg.train, micro_batch_size=cfg.train.micro_batch_size // ranks),
        run=dataclasses.replace(cfg.run, progress=False))
    config_path = run_dir / "train_ranks.yaml"
    save_config(rcfg, config_path)
    # run.num_threads, else the policy for `ranks` processes (not this process's own choice, in OMP_NUM_THREADS);
    # each rank's threads.apply(0) then reads it from the environment
    per_rank = cfg.run.num_threads or threads.choose_threads(threads.available_cores(), ranks,
                                                             threads.busy_cores(own_running=1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           **{name: str(per_rank) for name in threads.THREAD_ENV}}
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"  # skip DeepSpeed's accelerator probing
    scalars_path = run_dir / "tb" / "scalars.jsonl"
    scalars_path.unlink(missing_ok=True)  # --no-resume: this run's rows only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "gr_train.cli", "train", "--config",
           str(config_path), "--no-resume"]
    log_path = run_dir / "train.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            done = 0
            while proc.poll() is None:
                time.sleep(1.0)
                step = last_step(scalars_path)
                if step > done:
                    bar.update(step - done)
                    done = step
        except BaseException:
            os.killpg(proc.pid, 9)  # the launcher and every rank
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"demo: training on {ranks} ranks failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    bar.update(cfg.train.max_steps - bar.n)
    rows = [r for r in read_scalars(scalars_path) if "train/loss" in r]
    return (rows[-1] if rows else {}), per_rank


def read_scalars(path: Path) -> list[dict]:
    """Rows of a MetricsWriter's scalars.jsonl ({"step", tag: value, ...}); [] when absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_step(path: Path) -> int:
    rows = [r for r in read_scalars(path) if "train/loss" in r]
    return int(rows[-1]["step"]) if rows else 0


def tensorboard_summary(cfg: RunConfig, ranks: int, stages: Stages) -> dict:
    """Read rank 0's TensorBoard events back (tensorboard's EventAccumulator): tags, steps, the world size."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(cfg.run.run_dir) / "tb"
    with stages.stage("tensorboard", total=1, unit="dir") as (bar, summary):
        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        world = [e.value for e in acc.Scalars("perf/world_size")] if "perf/world_size" in tags else []
        steps = max((e.step for tag in tags for e in acc.Scalars(tag)), default=0)
        bar.update()
        files = sorted(tb.glob("events.out.tfevents.*"))
        summary.append(f"{len(files)} event file(s) from rank 0, {len(tags)} scalar tags up to step {steps}, "
                       f"world size {int(world[0]) if world else '?'} → tensorboard --logdir {tb}")
    if world and int(world[0]) != ranks:
        raise RuntimeError(f"demo: TensorBoard logged world size {world[0]}, expected {ranks}")
    return {"tags": len(tags), "world_size": world[0] if world else None}


def dev_curve_points(cfg: RunConfig, untrained: dict) -> list[dict]:
    """The points of dev_curves.png: step 0 from the untrained reranker's evaluation (stage 4: the same dev
    questions, reader and hard top-k loss as a dev evaluation during training), then every dev evaluation the
    training logged (tb/scalars.jsonl rows with eval/dev_loss_hard). Each point: {"step", "eval/recall@k",
    "eval/recall@k_indirect", "eval/recall@k_direct", "eval/dev_loss_hard"} with k = gumbel.k."""
    k = cfg.gumbel.k
    ranking = untrained["ranking"]
    start = {"step": 0, f"eval/recall@{k}": ranking["all"][f"recall@{k}"],
             f"eval/recall@{k}_indirect": ranking["indirect"][f"recall@{k}"],
             f"eval/recall@{k}_direct": ranking["direct"][f"recall@{k}"],
             "eval/dev_loss_hard": untrained["loss"]["loss_hard"]}
    logged = [r for r in read_scalars(Path(cfg.run.run_dir) / "tb" / "scalars.jsonl") if "eval/dev_loss_hard" in r]
    return [start, *(r for r in logged if r["step"] > 0)]


def plot_dev_curves(cfg: RunConfig, stages: Stages, untrained: dict) -> Path:
    """<run_dir>/dev_curves.png: dev recall@k (all / indirect / direct gold passages) and the label-free dev loss
    (eval/dev_loss_hard: the frozen reader's answer loss with the hard top-k) from step 0 (the untrained reranker,
    `untrained`: its evaluate() result) through every dev evaluation of the training (dev_curve_points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(cfg.run.run_dir)
    k = cfg.gumbel.k
    rows = dev_curve_points(cfg, untrained)
    out = run_dir / "dev_curves.png"
    with stages.stage("plot", total=1, unit="png") as (bar, summary):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        steps = [r["step"] for r in rows]
        for tag, label in ((f"eval/recall@{k}", "all gold"), (f"eval/recall@{k}_indirect", "indirect (bridge)"),
                           (f"eval/recall@{k}_direct", "direct (answer)")):
            left.plot(steps, [r.get(tag, float("nan")) for r in rows], marker="o", label=label)
        left.set(xlabel="step", ylabel=f"dev recall@{k}", ylim=(0, 1.02), title="dev recall (hard top-k)")
        left.legend(loc="lower right")
        right.plot(steps, [r["eval/dev_loss_hard"] for r in rows], marker="o", color="tab:red")
        right.set(xlabel="step", ylabel="nats / answer token", title="label-free dev loss (eval/dev_loss_hard)")
        for ax in (left, right):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        bar.update()
        summary.append(f"step 0 and {len(rows) - 1} dev evaluations → {out}")
    return out


def export(cfg: RunConfig, stages: Stages) -> dict:
    """The trained reranker → <run_dir>/export (gr_train/export.py), then loaded in a fresh Python process with
    plain transformers (CrossEncoder for a cross-encoder) and scored on dev pairs: RuntimeError unless every
    score is within EXPORT_TOLERANCE of the training code's."""
    import torch

    from gr_train.data import load_split, passage_string
    from gr_train.export import export_run
    from gr_train.reranker import SETTINGS_FILE, Reranker

    run_dir = Path(cfg.run.run_dir)
    out = run_dir / "export"
    with stages.stage("export", total=2, unit="step") as (bar, summary):
        export_run(run_dir, out, "final", [run_dir / "results.json"])
        bar.update()
        records = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")[:8]
        reranker = Reranker.load(run_dir / "final" / "reranker").eval()
        with torch.no_grad():
            w = reranker.score([r.question for r in records],
                               [[(c.title, c.text) for c in r.ctxs[: cfg.data.n_candidates]] for r in records])
        n = cfg.data.n_candidates
        pairs = [[r.question, passage_string(c.title, c.text)] for r in records for c in r.ctxs[:n]]
        check_path = run_dir / "export_check.json"
        check_path.write_text(json.dumps({"pairs": pairs, "expected": w.flatten().tolist()}))
        proc = subprocess.run([sys.executable, "-m", "gr_train.demo", "score-export", str(out), str(check_path)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"demo: scoring {out} in a fresh process failed:\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        diff = max(abs(a - b) for a, b in zip(got["scores"], w.flatten().tolist()))
        bar.update()
        if diff > EXPORT_TOLERANCE or len(got["scores"]) != len(pairs):
            raise RuntimeError(f"demo: the exported reranker scores differ from training's by {diff:.2e} "
                               f"(> {EXPORT_TOLERANCE:g}) on {len(pairs)} dev pairs")
        kind = json.loads((out / SETTINGS_FILE).read_text())["kind"]
        summary.append(f"{out} (model card README.md); a fresh process loads it with {got['loader']} and scores "
                       f"{len(pairs)} dev pairs as in training (max |diff| {diff:.1e} <= {EXPORT_TOLERANCE:g})")
    return {"path": str(out), "kind": kind, "loader": got["loader"], "pairs": len(pairs), "max_abs_diff": diff}


def print_results(cfg: RunConfig, results: dict) -> None:
    run_dir = Path(cfg.run.run_dir)
    em = results["reader_em"]["two_hop"]
    print(f"\nDemo reader exact match on two-hop dev questions: all passages {em['all']:.2f}, all but the bridge "
          f"{em['no_indirect']:.2f}, gold only {em['gold']:.2f}, direct only {em['direct']:.2f}, none {em['none']:.2f}")
    tau = f"{cfg.gumbel.tau}" + ("" if cfg.gumbel.tau_end is None else f"->{cfg.gumbel.tau_end}")
    how = (f"{cfg.gumbel.sample_count()} sampled sets per question" if cfg.gumbel.estimator == "score_function"
           else f"tau={tau}")
    selection = "greedy selection of the conditional reranker" if cfg.reranker.conditional else "hard top-k"
    print(f"Reranker before/after G-Rerank ({cfg.gumbel.estimator}, {cfg.train.max_steps} steps, k={cfg.gumbel.k}, "
          f"kappa={cfg.gumbel.kappa}, {how}); the reader reads the {selection}'s {cfg.reader_k()} passages:")
    print((run_dir / "results.md").read_text().rstrip())
    if not results["trained"]["scores"]["separated"]:
        print("WARNING: the trained reranker's scores did not separate (median per-question std "
              f"{results['trained']['scores']['w_std_median']:.4f}); try a larger gumbel.kappa")
    print(f"\nwall time {results['stages_s']['total']:.0f} s; results: {run_dir / 'results.json'}   "
          f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}   curves: {run_dir / 'dev_curves.png'}   "
          f"export: {results['export']['path']}")


# -- the export check's fresh process -----------------------------------------------------------------------------


def score_exported(folder: str | Path, pairs: list[tuple[str, str]]) -> tuple[list[float], str]:
    """Scores w of (question, passage) pairs from an exported folder with plain transformers, as its model card
    says: CrossEncoder(folder).predict for a cross-encoder and a causal_lm reranker (its LogitScore head), the
    mean-pooled cosine x score_scale of AutoModel for a bi-encoder, the score token's first-step logit of
    AutoModelForSeq2SeqLM for RankT5. Returns (w, loader)."""
    import torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

    from gr_train.reranker import SETTINGS_FILE

    folder = Path(folder)
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    kind, max_tokens = settings["kind"], settings["max_tokens"]
    if kind in ("cross_encoder", "causal_lm"):
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(folder), max_length=max_tokens)
        return [float(x) for x in model.predict(pairs, batch_size=64)], "sentence_transformers.CrossEncoder"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions, passages = [q for q, _ in pairs], [p for _, p in pairs]
    with torch.no_grad():
        if kind == "bi_encoder":
            model = AutoModel.from_pretrained(folder).eval()

            def embed(texts):
                enc = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

            w = settings["score_scale"] * torch.cosine_similarity(embed(questions), embed(passages), dim=-1)
            return w.tolist(), "transformers.AutoModel"
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        texts = [f"Query: {q} Document: {p}" for q, p in pairs]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        start = torch.full((len(texts), 1), model.config.decoder_start_token_id)
        logits = model(**enc, decoder_input_ids=start).logits
        token = tokenizer.convert_tokens_to_ids(settings["score_token"])
        return logits[:, 0, token].tolist(), "transformers.AutoModelForSeq2SeqLM"


if __name__ == "__main__":  # python -m gr_train.demo score-export FOLDER CHECK.json → {"scores", "loader"}
    if len(sys.argv) != 4 or sys.argv[1] != "score-export":
        sys.exit("usage: python -m gr_train.demo score-export FOLDER CHECK.json")
    scores, loader = score_exported(sys.argv[2], [tuple(p) for p in json.loads(Path(sys.argv[3]).read_text())["pairs"]])
    print(json.dumps({"scores": scores, "loader": loader}))
