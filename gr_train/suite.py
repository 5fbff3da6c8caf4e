"""A comparison on several datasets in one command: `gr-train suite --config configs/real.yaml`.

For every dataset of `suite.datasets` (train and dev files in any supported format: HotpotQA, 2Wiki, MuSiQue,
FiD, Parquet; or `synthetic:` generator settings, written by the embedded generator): the first
`suite.max_train` / `suite.max_dev` questions are written as FiD JSONL under `<out>/<dataset>/data/`, then
`compare.run_compare` trains every row of `suite.objectives` (with `suite.row_overrides`) over `suite.seeds` from
the same initial reranker and evaluates it with hard top-k (plus the untrained reranker and the reader-only rows).
`<out>/results.md`, `<out>/suite.json` and the heat map `<out>/suite.png` (which row wins where) gather the
tables with sizes and wall times. Finished runs are not retrained (compare's result files), so an interrupted
suite resumes where it stopped. `configs/study.yaml` is the structure study on generated data.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from gr_train import compare, reader_cache, synthetic
from gr_train.config import ConfigError, RunConfig, apply_override, to_dict, validate
from gr_train.data import load_any, save_records
from gr_train.evaluate import labelled

log = logging.getLogger("gr_train.suite")

DATASET_KEYS = {"train", "dev", "format", "overrides", "synthetic", "dev_for_train"}


def dataset_config(cfg: RunConfig, name: str, spec: dict, out_dir: Path) -> tuple[RunConfig, int, int]:
    """The dataset's files cut to the configured sizes, written under <out_dir>/<name>/data/, and its config
    (cfg + the dataset's overrides, data paths set). Returns (config, train questions, dev questions)."""
    where = f"suite.datasets.{name}"
    files_given = isinstance(spec, dict) and {"train", "dev"} <= set(spec) and "synthetic" not in spec
    generated = isinstance(spec, dict) and isinstance(spec.get("synthetic"), dict) and not {"train", "dev"} & set(spec)
    if not (files_given or generated) or set(spec) - DATASET_KEYS:
        raise ConfigError(f"{where}: expected a mapping with train and dev files (and optional format, overrides) "
                          f"or with synthetic: {{generator key: value}} (and optional overrides), got {spec!r}")
    s = cfg.suite
    fmt = spec.get("format", "auto")
    if generated:  # the embedded generator with this dataset's settings, from the suite's run.seed
        gcfg = copy.deepcopy(cfg)
        for key, value in spec["synthetic"].items():
            apply_override(gcfg, f"synthetic.{key}={value}", f"{where}.synthetic.{key}")
        validate(gcfg)
        sources = dict(zip(("train", "dev"), synthetic.write_demo_data(gcfg.synthetic, out_dir / name / "source",
                                                                          cfg.run.seed)))
    else:
        sources = {"train": spec["train"], "dev": spec["dev"]}
    loaded = {split: load_any(sources[split], fmt) for split in ("train", "dev")}
    moved = spec.get("dev_for_train", 0)
    if not isinstance(moved, int) or isinstance(moved, bool) or not 0 <= moved < len(loaded["dev"]):
        raise ConfigError(f"{where}.dev_for_train: expected an integer from 0 to {len(loaded['dev']) - 1} (the dev "
                          f"file has {len(loaded['dev'])} questions), got {moved!r}")
    if moved:  # a train sample too small: the last `moved` dev questions train, the rest evaluate
        loaded = {"train": loaded["train"] + loaded["dev"][-moved:], "dev": loaded["dev"][:-moved]}
    files = {}
    for split, limit in (("train", s.max_train), ("dev", s.max_dev)):
        records = loaded[split]
        records = records[:limit] if limit else records
        path = out_dir / name / "data" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_records(records, path)
        files[split] = (path, len(records))
    # a generated dataset's runs keep its generator settings: the reranker's tokenizer is built from them
    dcfg = copy.deepcopy(gcfg if generated else cfg)
    for text in spec.get("overrides", []):
        apply_override(dcfg, text, f"{where}.overrides '{text}'")
    dcfg.data.train_path, dcfg.data.dev_path = str(files["train"][0]), str(files["dev"][0])
    validate(dcfg)
    return dcfg, files["train"][1], files["dev"][1]


TUNED = "reader"  # <out>/reader/: the reader fine-tuning's data, run, report before and record


def tuning_config(cfg: RunConfig, train_file: Path, run_dir: Path) -> RunConfig:
    """cfg + suite.reader_tuning (passage-state caching off), training on train_file into run_dir; ConfigError
    unless it fine-tunes the reader (objective.name=reader, reader.trainable=true)."""
    rcfg = copy.deepcopy(cfg)
    # the suite's caches of the frozen reader's outputs are for the reranker rows; this run trains the reader
    rcfg.objective.cache_passage_states, rcfg.objective.passage_state_dir = False, None
    for text in cfg.suite.reader_tuning:
        apply_override(rcfg, text, f"suite.reader_tuning '{text}'")
    rcfg.data.train_path, rcfg.data.dev_path, rcfg.run.run_dir = str(train_file), None, str(run_dir)
    validate(rcfg)
    if rcfg.objective.name != "reader" or not rcfg.reader.trainable:
        raise ConfigError("suite.reader_tuning: needs objective.name=reader and reader.trainable=true (got "
                          f"objective.name={rcfg.objective.name}, reader.trainable={rcfg.reader.trainable})")
    return rcfg


def tune_reader(cfg: RunConfig, prepared: dict, out_dir: Path) -> dict:
    """suite.reader_tuning: the reader report of the configured reader on every dataset's dev questions (those with
    is_gold labels; kept in <out>/reader/report_before.json), then one fine-tuning run on all datasets' training
    questions together (<out>/reader/run, resumed from its step-NNNNNN/ checkpoints; not run again once
    <out>/reader/tuned.json is written). Processes that run parts of one suite into the same --out (suite.only)
    share it: the first one does the work under <out>/reader/.lock, the others wait for it and read its record.
    Returns {"path": the fine-tuned reader folder, "train_questions", "wall_s", "steps", "before": {dataset: report
    without per-question values}}."""
    import fcntl

    root = out_dir / TUNED
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        return _tune_reader(cfg, prepared, root)


def _tune_reader(cfg: RunConfig, prepared: dict, root: Path) -> dict:
    from gr_train import train
    from gr_train.models import build_reader
    from gr_train.reader_report import reader_report

    train_file = root / "data" / "train.jsonl"
    records = [r for dcfg, _, _ in prepared.values() for r in load_any(dcfg.data.train_path)]
    save_records(records, train_file)
    rcfg = tuning_config(cfg, train_file, root / "run")
    before_path, record_path = root / "report_before.json", root / "tuned.json"
    before = json.loads(before_path.read_text()) if before_path.is_file() else {}
    for name, (dcfg, _, _) in prepared.items():
        if name in before:
            continue
        dev = load_any(dcfg.data.dev_path)
        if not labelled(dev):  # the report compares gold passage sets
            log.info("suite: no reader report before fine-tuning for %s (its dev data has no is_gold labels)", name)
            continue
        torch.manual_seed(dcfg.run.seed)
        reader = build_reader(dcfg.reader).to(dcfg.run.device)
        report = reader_report(reader, dev, dcfg, dcfg.run.progress)
        before[name] = {k: v for k, v in report.items() if k != "per_question"}
        compare.write_json(before_path, before)
        reader_cache.clear()
    if not record_path.is_file():
        log.info("suite: fine-tuning the reader on %d training questions (%s)", len(records), root / "run")
        t0 = time.perf_counter()
        out = train.main(rcfg, resume=True)
        compare.write_json(record_path, {"train_questions": len(records), "wall_s": time.perf_counter() - t0,
                                         "steps": rcfg.train.max_steps, "path": str(Path(out["final"]) / "reader")})
    return {**json.loads(record_path.read_text()), "before": before}


def run_suite(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Run the comparison on every dataset; write <out_dir>/results.md and <out_dir>/suite.json."""
    s = cfg.suite
    if not s.datasets:
        raise ConfigError("suite.datasets: no datasets configured (name: {train: FILE, dev: FILE})")
    unknown = [name for name in s.only if name not in s.datasets]
    if unknown:
        raise ConfigError(f"suite.only: {unknown} not in suite.datasets ({', '.join(s.datasets)})")
    datasets = {name: spec for name, spec in s.datasets.items() if not s.only or name in s.only}
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    if s.models_dir:
        from gr_train.packaged import prepare_models

        prepare_models(s.models_dir)
    results = {"config": to_dict(cfg), "machine": machine(), "datasets": {}}
    # Every dataset's files and overrides are checked before the first (long) training starts.
    prepared = {name: dataset_config(cfg, name, spec, out_dir) for name, spec in datasets.items()}
    if s.reader_tuning:  # one reader for the whole suite, tuned on every dataset's training questions (suite.only too)
        pool = {name: prepared[name] if name in prepared else dataset_config(cfg, name, spec, out_dir)
                for name, spec in s.datasets.items()}
        results["reader_tuning"] = tune_reader(cfg, pool, out_dir)
        for dcfg, _, _ in prepared.values():  # every row reads the fine-tuned reader, frozen
            dcfg.reader.name_or_path = results["reader_tuning"]["path"]
    for name, spec in datasets.items():
        t0 = time.perf_counter()
        dcfg, n_train, n_dev = prepared[name]
        log.info("suite: %s (%d train / %d dev questions): %s over seeds %s", name, n_train, n_dev,
                 ", ".join(s.objectives), s.seeds)
        summary = compare.run_compare(dcfg, list(s.objectives), list(s.seeds), out_dir / name,
                                      {row: list(v) for row, v in s.row_overrides.items()})
        reader_cache.clear()  # passage states of this dataset are not needed again
        generated = "synthetic" in spec
        results["datasets"][name] = {"train_questions": n_train, "dev_questions": n_dev,
                                     "train_file": "generated" if generated else spec["train"],
                                     "dev_file": "generated" if generated else spec["dev"],
                                     "synthetic": dict(spec.get("synthetic", {})),
                                     "overrides": list(spec.get("overrides", [])),
                                     "wall_s": time.perf_counter() - t0, "compare": summary}
    results["wall_s"] = time.perf_counter() - t_start
    compare.write_json(out_dir / "suite.json", results)
    (out_dir / "results.md").write_text(format_results(results) + "\n")
    write_heatmap(out_dir / "suite.png", results)
    return results


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def heatmap_metrics(results: dict) -> list[str]:
    """The heat map's metrics: indirect recall, fact coverage and EM at the reader's k (compare.interval_metrics);
    where some dataset's dev data has no is_gold labels, also the label-free answer recall at that k (the gold
    metrics only where some dataset has labels)."""
    summaries = [d["compare"] for d in results["datasets"].values()]
    k = compare.plot_k_of(summaries[0])
    gold = [f"recall@{k}_indirect", f"coverage@{k}"] if any(s.get("labelled", True) for s in summaries) else []
    free = [] if all(s.get("labelled", True) for s in summaries) else [f"answer_recall@{k}"]
    return [*gold, *free, "em"]


def winners(results: dict, metric: str) -> dict[str, list[str]]:
    """Per dataset, the trained rows whose mean is the best or whose paired difference from the best has an
    interval that includes 0 (not distinguishable from the best)."""
    out = {}
    for name, d in results["datasets"].items():
        iv, rows = d["compare"]["intervals"], d["compare"]["objectives"]
        means = {r: iv["rows"][r][metric]["mean"] for r in rows if metric in iv["rows"].get(r, {})}
        if not means:
            continue
        best = max(means, key=means.get)
        tied = []
        for r in means:
            diff = iv["differences"].get(f"{best} - {r}", iv["differences"].get(f"{r} - {best}", {})).get(metric)
            if r == best or (diff is not None and diff["lo"] <= 0 <= diff["hi"]):
                tied.append(r)
        out[name] = tied
    return out


def write_heatmap(path: Path, results: dict) -> None:
    """suite.png: one panel per heatmap_metrics metric, rows = the compared rows (and the untrained reranker),
    columns = datasets, cells = the mean over seeds; the best cell of a column is boxed."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    datasets = list(results["datasets"])
    rows = ["untrained", *next(iter(results["datasets"].values()))["compare"]["objectives"]]
    metrics = heatmap_metrics(results)
    fig = Figure(figsize=(1.6 * len(datasets) * len(metrics) + 2, 0.45 * len(rows) + 1.8))
    FigureCanvasAgg(fig)
    for ax, metric in zip(fig.subplots(1, len(metrics)), metrics):
        grid = np.full((len(rows), len(datasets)), np.nan)
        for j, name in enumerate(datasets):
            ivr = results["datasets"][name]["compare"]["intervals"]["rows"]
            for i, row in enumerate(rows):
                if metric in ivr.get(row, {}):
                    grid[i, j] = ivr[row][metric]["mean"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for j in range(len(datasets)):
            col = grid[1:, j]
            best = 1 + int(np.nanargmax(col)) if not np.all(np.isnan(col)) else None
            for i in range(len(rows)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if grid[i, j] > 0.6 else "white", fontweight="bold" if i == best else None)
            if best is not None:
                ax.add_patch(Rectangle((j - 0.5, best - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(metric)
    fig.suptitle(f"mean over seeds {', '.join(map(str, results['config']['suite']['seeds']))}; red box: best "
                 "trained row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def format_results(results: dict) -> str:
    lines = [f"Wall time {results['wall_s'] / 60:.1f} min on {results['machine']['cpus']} CPUs "
             f"({results['machine']['torch_threads']} torch threads)."]
    tuning = results.get("reader_tuning")
    if tuning:
        from gr_train.reader_report import format_report

        lines += ["", "## Reader fine-tuning", "",
                  f"{tuning['steps']} steps on the {tuning['train_questions']} training questions of every dataset "
                  f"({tuning['wall_s'] / 60:.1f} min; overrides: "
                  f"{' '.join(results['config']['suite']['reader_tuning'])}) → `{tuning['path']}`, which every row "
                  "reads. Reader report before fine-tuning (after: in each dataset's section):"]
        for name, report in tuning["before"].items():
            lines += ["", format_report(report, f"{name}, before fine-tuning")]
    metrics = heatmap_metrics(results)
    lines += ["", "Best rows per dataset (the best mean and every row whose paired 95% interval of the difference "
              "from it includes 0):", "", "| dataset | " + " | ".join(metrics) + " |",
              "|---" * (len(metrics) + 1) + "|"]
    best = {m: winners(results, m) for m in metrics}
    for name in results["datasets"]:
        lines.append(f"| {name} | " + " | ".join(", ".join(best[m].get(name, [])) or "–" for m in metrics) + " |")
    for name, d in results["datasets"].items():
        lines += ["", f"## {name}", "",
                  (f"generator settings {d['synthetic']}; " if d.get("synthetic") else "") +
                  f"{d['train_questions']} train questions ({d['train_file']}), {d['dev_questions']} dev questions "
                  f"({d['dev_file']}); {d['wall_s'] / 60:.1f} min" +
                  (f"; overrides: {' '.join(d['overrides'])}" if d["overrides"] else "") + ".", "",
                  compare.format_markdown(d["compare"])]
    return "\n".join(lines)
