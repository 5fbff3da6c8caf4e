"""A comparison on several datasets in one command: `gr-train suite --config configs/real.yaml`.

For every dataset of `suite.datasets` (train and dev files in any supported format: HotpotQA, 2Wiki, MuSiQue,
FiD, Parquet): the first `suite.max_train` / `suite.max_dev` questions are written as FiD JSONL under
`<out>/<dataset>/data/`, then `compare.run_compare` trains every objective of `suite.objectives` over
`suite.seeds` from the same initial reranker and evaluates it with hard top-k (plus the untrained reranker and
the reader-only rows). `<out>/results.md` and `<out>/suite.json` gather the tables with sizes and wall times.
Finished runs are not retrained (compare's result files), so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from pathlib import Path

import torch

from gr_train import compare, reader_cache
from gr_train.config import ConfigError, RunConfig, apply_override, to_dict, validate
from gr_train.data import load_any, save_records

log = logging.getLogger("gr_train.suite")

DATASET_KEYS = {"train", "dev", "format", "overrides"}


def dataset_config(cfg: RunConfig, name: str, spec: dict, out_dir: Path) -> tuple[RunConfig, int, int]:
    """The dataset's files cut to the configured sizes, written under <out_dir>/<name>/data/, and its config
    (cfg + the dataset's overrides, data paths set). Returns (config, train questions, dev questions)."""
    where = f"suite.datasets.{name}"
    if not isinstance(spec, dict) or not {"train", "dev"} <= set(spec) or set(spec) - DATASET_KEYS:
        raise ConfigError(f"{where}: expected a mapping with train and dev (and optional format, overrides), "
                          f"got {spec!r}")
    s = cfg.suite
    fmt = spec.get("format", "auto")
    files = {}
    for split, limit in (("train", s.max_train), ("dev", s.max_dev)):
        records = load_any(spec[split], fmt)
        records = records[:limit] if limit else records
        path = out_dir / name / "data" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_records(records, path)
        files[split] = (path, len(records))
    dcfg = copy.deepcopy(cfg)
    for text in spec.get("overrides", []):
        apply_override(dcfg, text, f"{where}.overrides '{text}'")
    dcfg.data.train_path, dcfg.data.dev_path = str(files["train"][0]), str(files["dev"][0])
    validate(dcfg)
    return dcfg, files["train"][1], files["dev"][1]


def run_suite(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Run the comparison on every dataset; write <out_dir>/results.md and <out_dir>/suite.json."""
    s = cfg.suite
    if not s.datasets:
        raise ConfigError("suite.datasets: no datasets configured (name: {train: FILE, dev: FILE})")
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    if s.models_dir:
        from gr_train.packaged import prepare_models

        prepare_models(s.models_dir)
    results = {"config": to_dict(cfg), "machine": machine(), "datasets": {}}
    # Every dataset's files and overrides are checked before the first (long) training starts.
    prepared = {name: dataset_config(cfg, name, spec, out_dir) for name, spec in s.datasets.items()}
    for name, spec in s.datasets.items():
        t0 = time.perf_counter()
        dcfg, n_train, n_dev = prepared[name]
        log.info("suite: %s (%d train / %d dev questions): %s over seeds %s", name, n_train, n_dev,
                 ", ".join(s.objectives), s.seeds)
        summary = compare.run_compare(dcfg, list(s.objectives), list(s.seeds), out_dir / name)
        reader_cache.clear()  # passage states of this dataset are not needed again
        results["datasets"][name] = {"train_questions": n_train, "dev_questions": n_dev,
                                     "train_file": spec["train"], "dev_file": spec["dev"],
                                     "overrides": list(spec.get("overrides", [])),
                                     "wall_s": time.perf_counter() - t0, "compare": summary}
    results["wall_s"] = time.perf_counter() - t_start
    compare.write_json(out_dir / "suite.json", results)
    (out_dir / "results.md").write_text(format_results(results) + "\n")
    return results


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def format_results(results: dict) -> str:
    lines = [f"Wall time {results['wall_s'] / 60:.1f} min on {results['machine']['cpus']} CPUs "
             f"({results['machine']['torch_threads']} torch threads)."]
    for name, d in results["datasets"].items():
        lines += ["", f"## {name}", "",
                  f"{d['train_questions']} train questions ({d['train_file']}), {d['dev_questions']} dev questions "
                  f"({d['dev_file']}); {d['wall_s'] / 60:.1f} min" +
                  (f"; overrides: {' '.join(d['overrides'])}" if d["overrides"] else "") + ".", "",
                  compare.format_markdown(d["compare"])]
    return "\n".join(lines)
