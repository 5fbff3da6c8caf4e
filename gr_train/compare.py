"""Objective comparison: every objective trained from the same initial reranker, on the same data and budget, over
several seeds → `compare.json`, `compare.md` (mean ± std over seeds) and `compare.png` (dev metrics over steps).
The dev file may have is_gold on every passage (gold recall / NDCG / MRR / coverage, beside the label-free columns)
or on none (the label-free columns alone: answer recall@k, EM, F1, the hard top-k loss; see table_columns).

Run as `gr-train compare --config CFG --train FILE --dev FILE --objectives gumbel,pdist --seeds 0,1,2 --out DIR`.
A row may name a variant of an objective, `LABEL=OBJECTIVE` (e.g. `gumbel_st=gumbel` with
`--set gumbel_st:gumbel.estimator=straight_through`). compare.md also gives 95% intervals (paired bootstrap over
questions and seeds, stats.py) for each row and for the differences that matter (each row minus the untrained
reranker; each G-Rerank row minus each other row).
All runs happen one after another in this process with the local runtime; a distributed comparison is one
`gr-train train` launch per (objective, seed) with `run.seed=S objective.name=OBJ`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch

from gr_train import config as config_mod
from gr_train import checks, train
from gr_train.checkpoint import param_checksum
from gr_train.config import ConfigError, RunConfig, parse_override, to_dict, validate
from gr_train.data import load_split
from gr_train.evaluate import KINDS, answer_metrics, evaluate, labelled, reader_answers
from gr_train.models import build_models
from gr_train.objectives import OBJECTIVES

log = logging.getLogger("gr_train.compare")

RESULT_FILE = "compare_result.json"  # in every run folder: its metrics; present = finished, never retrained
INIT_FILE = "init.json"  # in every run folder: the checksum of the reranker the run started from
UNTRAINED = "untrained"
# Reader-only rows: which of a question's first n_candidates passages the frozen reader sees, no reranker.
REFERENCES = {
    "reader: all passages": lambda b, r: list(range(len(r.ctxs))),
    "reader: gold passages": lambda b, r: [i for i, p in enumerate(r.ctxs) if p.is_gold],
    "reader: all but indirect gold": lambda b, r: [i for i, p in enumerate(r.ctxs) if not p.indirect],
    "reader: no passages": lambda b, r: [],
}
GOLD_REFERENCES = ("reader: gold passages", "reader: all but indirect gold")  # need is_gold labels
# Per-objective overrides may tune how an objective learns (optim, gumbel, objective settings), never what is
# compared: the data, the budget, the reader, the metrics or the run layout.
FIXED_SECTIONS = ("run", "data", "reader", "eval")
FIXED_KEYS = ("objective.name", "train.max_steps", "train.micro_batch_size", "train.grad_accum_steps")


def run_compare(cfg: RunConfig, objectives: list[str], seeds: list[int], out_dir: str | Path,
                per_objective_overrides: dict[str, list[str]] | None = None) -> dict:
    """Train and evaluate every (objective, seed); write compare.json, compare.md and compare.png into out_dir.

    Args:
        cfg: the shared config; data.train_path and data.dev_path must be set (any format load_any reads; the dev
            file with is_gold on every passage, or on none: then the label-free metrics alone).
            train.eval_every_steps = 0 becomes max_steps // 10 (the plot's points).
        objectives: row labels, each an objective.name value or LABEL=OBJECTIVE, e.g. ["gumbel", "pdist",
            "gumbel_st=gumbel"]; per_objective_overrides are keyed by label.
        seeds: run.seed values; for one seed every objective starts from the same reranker (checked).
        out_dir: runs go to <out_dir>/<objective>/seed-<s>/, the untrained and reader-only rows to
            <out_dir>/untrained/seed-<s>/. A run whose compare_result.json exists is not run again; an unfinished
            one resumes from its latest step-NNNNNN/ checkpoint (train.save_every_steps).
        per_objective_overrides: {objective: ["section.key=value", ...]}, e.g. {"pdist": ["optim.lr=1e-4"]}.
    Returns:
        The content of compare.json: {"objectives", "seeds", "ks", "labelled" (is_gold on the dev passages),
        "dev_questions", "counts" (labelled only), "rows": {row: {"per_seed": {seed: metrics}, "mean": metrics,
        "std": metrics}}, "intervals", ...}. Metrics (flatten): with labels recall@k / ndcg@k / coverage@k / mrr
        (suffix _direct / _indirect); always answer_recall@k (label-free), em, f1, loss_soft, loss_hard, gap, w_std,
        s_per_query. std is the sample std over seeds (0 for one seed). Without labels, the reader-only rows
        GOLD_REFERENCES and the reader report are left out.
    """
    rows_of = parse_rows(objectives)
    objectives = list(rows_of)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare: expected distinct seeds, got {seeds}")
    out_dir = Path(out_dir)
    per_objective_overrides = per_objective_overrides or {}
    base = base_config(cfg, rows_of, per_objective_overrides)
    for label, obj in rows_of.items():  # every row's config is valid before the first model is built
        objective_config(base, label, seeds[0], out_dir, per_objective_overrides.get(label, []), obj)
    checks.check_reader_weights(base)
    checks.check_model_paths(base)
    dev = dev_records(base)
    # Before any model is built: the data against k, eval.ks, reader_k, n_candidates and the tokenizers; is_gold on
    # every dev passage or on none.
    train_records = load_split(base.data.train_path, base.data.n_candidates, "train")
    checks.check_data(base, {"train": (base.data.train_path, train_records), "dev": (base.data.dev_path, dev)},
                      labelled=("dev",), labels_required=False)
    with_labels = labelled(dev)
    if not with_labels:
        log.info("compare: %s has no is_gold labels: the label-free metrics only (answer recall@k, EM, F1, hard "
                 "top-k loss)%s", base.data.dev_path, "; no reader report" if base.eval.reader_report else "")
    rows: dict[str, dict[int, dict]] = {}
    per_question: dict[str, dict[int, dict]] = {}
    report = None
    for seed in seeds:
        ref = reference_runs(base, seed, dev, out_dir / UNTRAINED / f"seed-{seed}",
                             with_report=base.eval.reader_report and seed == seeds[0] and with_labels)
        report = report or ref.get("reader_report")
        for name, metrics in ref["rows"].items():
            rows.setdefault(name, {})[seed] = metrics
        per_question.setdefault(UNTRAINED, {})[seed] = ref.get("per_question")
        for label, obj in rows_of.items():
            run_cfg = objective_config(base, label, seed, out_dir, per_objective_overrides.get(label, []), obj)
            result = objective_run(run_cfg, dev, ref["init_checksum"])
            rows.setdefault(label, {})[seed] = result["metrics"]
            per_question.setdefault(label, {})[seed] = result["eval"].get("per_question")
    order = [UNTRAINED, *objectives, *references(with_labels)]
    summary = {"objectives": list(objectives), "seeds": list(seeds), "ks": list(base.eval.ks),
               "reader_k": base.reader_k(), "max_steps": base.train.max_steps,
               "global_batch": base.global_batch(world_size=1),  # compare trains in this process
               "row_objectives": dict(rows_of),
               "overrides": {o: list(v) for o, v in per_objective_overrides.items()},
               "labelled": with_labels, "dev_questions": len(dev),
               **({"counts": checks.question_counts(dev, base.data.n_candidates)} if with_labels else {}),
               "n_candidates": base.data.n_candidates,
               "rows": {name: aggregate(rows[name]) for name in order},
               "intervals": intervals(per_question, rows_of, seeds, interval_metrics(base, with_labels))}
    if report is not None:  # the frozen reader's report on the dev set (first seed's reader)
        summary["reader_report"] = {k: v for k, v in report.items() if k != "per_question"}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", summary)
    (out_dir / "compare.md").write_text(format_markdown(summary) + "\n")
    write_plot(out_dir / "compare.png", out_dir, objectives, seeds, plot_panels(plot_k(base), with_labels),
               summary["rows"][UNTRAINED])
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------


def parse_rows(items: list[str]) -> dict[str, str]:
    """Row labels → objective names: "gumbel" → {"gumbel": "gumbel"}, "gumbel_st=gumbel" →
    {"gumbel_st": "gumbel"}.
    Raises ConfigError on an empty list, a repeated label, an unknown objective or a label that is not a plain name
    (it becomes a folder name)."""
    if not items:
        raise ConfigError("compare: no objectives given")
    rows: dict[str, str] = {}
    names = " | ".join(n for n, row in OBJECTIVES.items() if row.trains == "reranker")
    for item in items:
        label, _, obj = item.partition("=")
        label, obj = label.strip(), (obj or label).strip()
        if not label.replace("_", "").replace("-", "").isalnum() or label in (UNTRAINED, *REFERENCES):
            raise ConfigError(f"compare: row label '{label}' must be letters, digits, '_' or '-' (and not "
                              f"'{UNTRAINED}')")
        if obj not in OBJECTIVES or OBJECTIVES[obj].trains != "reranker":
            raise ConfigError(f"compare: unknown reranker objective '{obj}' in '{item}' ({names})")
        if label in rows:
            raise ConfigError(f"compare: row '{label}' given twice")
        rows[label] = obj
    return rows


def base_config(cfg: RunConfig, rows_of: dict[str, str], per_objective_overrides: dict) -> RunConfig:
    """A validated copy of cfg for the comparison; refuses what would make the runs incomparable."""
    for label in per_objective_overrides:
        if label not in rows_of:
            raise ConfigError(f"compare: overrides given for '{label}', which is not among the objectives "
                              f"({', '.join(rows_of)})")
    if cfg.runtime.engine != "local":
        raise ConfigError("runtime.engine: compare runs every training in this process (local); for a distributed "
                          "comparison launch `gr-train train` once per objective and seed")
    if not cfg.data.train_path or not cfg.data.dev_path:
        raise ConfigError("compare: set data.train_path and data.dev_path (--train FILE --dev FILE)")
    base = copy.deepcopy(cfg)
    if base.train.eval_every_steps == 0:  # ~10 points per curve in compare.png
        base.train.eval_every_steps = max(1, base.train.max_steps // 10)
    return base


def objective_config(base: RunConfig, obj: str, seed: int, out_dir: Path, overrides: list[str],
                     objective: str | None = None) -> RunConfig:
    """The config of one run: base, objective (default: the row label `obj`) and seed set, run_dir
    <out_dir>/<obj>/seed-<seed>, then overrides."""
    cfg = copy.deepcopy(base)
    cfg.objective.name, cfg.run.seed, cfg.run.run_dir = objective or obj, seed, str(out_dir / obj / f"seed-{seed}")
    for text in overrides:
        section, key, value = parse_override(text)
        if section in FIXED_SECTIONS or f"{section}.{key}" in FIXED_KEYS:
            raise ConfigError(f"override '{obj}:{text}': {section}.{key} must be the same for every objective "
                              f"(per-objective overrides may not change sections {', '.join(FIXED_SECTIONS)} "
                              f"or {', '.join(FIXED_KEYS)})")
        config_mod.apply_override(cfg, text, f"override '{obj}:{text}'")
    validate(cfg)
    return cfg


def dev_records(cfg: RunConfig) -> list:
    """The dev records (first eval.max_questions, if set)."""
    records = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    return records[: cfg.eval.max_questions] if cfg.eval.max_questions else records


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


def build_initial(cfg: RunConfig):
    """(reader, reranker) exactly as train.setup builds them for run.seed (same seeding, same build order)."""
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    return build_models(cfg)


def references(with_labels: bool) -> dict:
    """The reader-only rows that the dev data allows: without is_gold labels, not the GOLD_REFERENCES."""
    return {name: select for name, select in REFERENCES.items() if with_labels or name not in GOLD_REFERENCES}


def reference_runs(base: RunConfig, seed: int, dev: list, run_dir: Path, with_report: bool = False) -> dict:
    """The untrained reranker of this seed, evaluated, and the reader-only rows (references: those the dev labels
    allow); with_report, also the reader report (reader_report.py, needs labels) on the dev set. Cached in
    run_dir/RESULT_FILE.

    Returns {"init_checksum": str, "rows": {row name: metrics}, "per_question", "reader_report" (with_report)}.
    """
    cfg = copy.deepcopy(base)
    cfg.run.seed, cfg.run.run_dir = seed, str(run_dir)
    cached = load_result(run_dir, cfg)
    if cached is not None:
        return cached
    reader, reranker = build_initial(cfg)
    untrained = evaluate(cfg, reranker, reader, dev, cfg.run.progress, per_question=True)
    rows = {UNTRAINED: flatten(untrained)}
    # The reader-only rows choose among the same first n_candidates passages the rerankers choose from.
    cut = [dataclasses.replace(r, ctxs=r.ctxs[: cfg.data.n_candidates]) for r in dev]
    for name, select in references(labelled(dev)).items():
        ans = answer_metrics(cut, reader_answers(reader, cut, select, cfg.eval.batch_size, cfg=cfg),
                             normalization=cfg.eval.answer_normalization)
        rows[name] = {"em": ans["em"], "f1": ans["f1"]}
    result = {"init_checksum": param_checksum(reranker), "rows": rows, "per_question": untrained["per_question"],
              "config": comparable(cfg)}
    if with_report:
        from gr_train.reader_report import reader_report

        result["reader_report"] = reader_report(reader, cut, cfg, cfg.run.progress)
    write_json(run_dir / RESULT_FILE, result)
    return result


def objective_run(cfg: RunConfig, dev: list, init_checksum: str) -> dict:
    """Train one (objective, seed) run (resuming from its latest checkpoint) and evaluate it with hard top-k.

    Raises RuntimeError when its reranker does not start from `init_checksum` (the seed's untrained reranker).
    Returns {"metrics": {...}, "eval": evaluate()'s result, "train_s" and "steps" (the optimizer steps' seconds and
    count over the whole run, parts before a resume included), "eval_s", "init_checksum"}.
    """
    run_dir = Path(cfg.run.run_dir)
    cached = load_result(run_dir, cfg)
    if cached is not None:
        log.info("compare: %s is finished, not retrained", run_dir)
        return cached
    recipe = train.setup(cfg, resume=True)
    if recipe.start_step == 0:
        init = param_checksum(recipe.reranker)
        write_json(run_dir / INIT_FILE, {"init_checksum": init})
    else:  # resumed from a checkpoint: the start was recorded when the run began
        init = json.loads((run_dir / INIT_FILE).read_text())["init_checksum"]
    if init != init_checksum:
        raise RuntimeError(f"{run_dir}: objective {cfg.objective.name} seed {cfg.run.seed} did not start from the "
                           "seed's untrained reranker (a per-objective override changed the reranker?)")
    train.train(recipe)
    train.save_checkpoint(recipe)
    train.cleanup(recipe)
    t0 = time.perf_counter()
    result = evaluate(cfg, recipe.reranker, recipe.reader, dev, cfg.run.progress, per_question=True)
    # Optimizer steps only (forward, backward, update), over the whole run, parts before a resume included:
    # in-training evaluation and checkpoints are not counted.
    queries = recipe.timed_steps * recipe.global_batch
    metrics = dict(flatten(result), s_per_query=recipe.train_s / queries if queries else float("nan"))
    out = {"metrics": metrics, "eval": result, "train_s": recipe.train_s, "steps": recipe.timed_steps,
           "eval_s": time.perf_counter() - t0, "init_checksum": init, "config": comparable(cfg)}
    write_json(run_dir / RESULT_FILE, out)
    return out


# Sections that say which comparisons to run, not how a run trains: a run is reused whatever they hold (a suite
# run on one dataset and the same suite on three share their runs).
NOT_COMPARED = ("suite",)
# Keys that say where and whether the frozen reader's outputs are reused, not what they are (reader_cache.py;
# tests/test_reader_cache.py: the same losses with and without): a run is reused whatever they hold.
CACHE_KEYS = ("cache_reader_targets", "cache_passage_states", "passage_state_dir")


def comparable(cfg: RunConfig | dict) -> dict:
    """The config as recorded in a result file (or a recorded one, normalised): progress bars, caches and the suite
    section do not change a run's results."""
    d = to_dict(cfg) if isinstance(cfg, RunConfig) else dict(cfg)
    d["run"] = {k: v for k, v in d["run"].items() if k != "progress"}
    d["objective"] = {k: v for k, v in d.get("objective", {}).items() if k not in CACHE_KEYS}
    return {k: v for k, v in d.items() if k not in NOT_COMPARED}


# {section: {key: value}} for the keys whose default changed after they were added: the value a config recorded
# without the key ran with (the key's first default), where the current default would misread it
RECORDED_DEFAULTS = {"gumbel": {"kl_reference": "conditional"}}


def with_defaults(recorded: dict) -> dict:
    """A recorded config with the keys it lacks set to their defaults: a key added to config.py after a run was
    recorded keeps the old behaviour at its default (the rule for new keys), so the run still counts as finished; a
    key whose default changed since (RECORDED_DEFAULTS) gets the default it had then."""
    defaults = json.loads(json.dumps(comparable(RunConfig())))
    for sec, keys in RECORDED_DEFAULTS.items():
        defaults[sec] = {**defaults[sec], **keys}
    return {sec: ({**defaults[sec], **vals} if isinstance(vals, dict) and sec in defaults else vals)
            for sec, vals in recorded.items()}


def without_inert(d: dict) -> dict:
    """The config without the settings that change nothing in it: gumbel.kl_reference while the KL penalty is off
    (gumbel.kl_coef 0)."""
    gumbel = d.get("gumbel")
    if isinstance(gumbel, dict) and not gumbel.get("kl_coef"):
        d = {**d, "gumbel": {k: v for k, v in gumbel.items() if k != "kl_reference"}}
    return d


def load_result(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The finished result in run_dir, or None; ConfigError when it was produced with another config."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    recorded = without_inert(with_defaults(comparable(result.get("config") or {"run": {}})))
    if recorded != without_inert(json.loads(json.dumps(comparable(cfg)))):
        raise ConfigError(f"{path}: was produced with a different config; delete {run_dir} to rerun it, or use "
                          "another --out")
    return result


def write_json(path: Path, obj) -> None:
    """Write via a temporary file and rename: a crash never leaves a half-written result that counts as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Metrics, table, plot
# ---------------------------------------------------------------------------------------------------------------


def flatten(result: dict) -> dict[str, float]:
    """evaluate()'s result → flat metrics: with gold labels recall@k, ndcg@k, coverage@k, mrr (suffix _direct /
    _indirect / _yes_no); answer_recall@k (label-free, the mean of evaluate's "label_free"); em, f1, loss_soft,
    loss_hard, gap (with a reader); w_std."""
    out = {f"{m}" + ("" if kind == "all" else f"_{kind}"): v
           for kind, row in result.get("ranking", {}).items() for m, v in row.items() if m != "questions"}
    out.update({m: v["mean"] for m, v in result.get("label_free", {}).items() if m.startswith("answer_recall@")})
    if "reader" in result:
        out.update(em=result["reader"]["em"], f1=result["reader"]["f1"])
        out.update(result["loss"])
    out["w_std"] = result["scores"]["w_std_median"]
    return out


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict:
    """{"per_seed": {seed: metrics}, "mean": metrics, "std": metrics}; std = sample std (n - 1), 0 for one seed."""
    keys = list(next(iter(per_seed.values())))
    stats = {k: mean_std([m[k] for m in per_seed.values()]) for k in keys}
    return {"per_seed": {str(s): m for s, m in per_seed.items()},
            "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()}}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1; 0 for one value). A NaN (no question of a kind) makes both NaN."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def interval_metrics(cfg: RunConfig, with_labels: bool = True) -> list[str]:
    """The metrics given with intervals: with labels, gold recall and fact coverage at the reader's k; always the
    label-free answer recall at that k, EM, F1 and the hard top-k loss."""
    k = plot_k(cfg)
    free = [f"answer_recall@{k}", "em", "f1", "loss_hard"]
    if not with_labels:
        return free
    return [f"recall@{k}", f"recall@{k}_direct", f"recall@{k}_indirect", f"coverage@{k}", *free]


def intervals(per_question: dict[str, dict[int, dict | None]], rows_of: dict[str, str], seeds: list[int],
              metrics: list[str]) -> dict:
    """95% paired-bootstrap intervals: {"rows": {row: {metric: {mean, lo, hi, n}}}, "differences": {"A - B":
    {metric: ...}}} for each row minus the untrained reranker and each G-Rerank row minus each other row. Rows
    without per-question results (made by an older version) are left out."""
    from gr_train.stats import paired_bootstrap

    have = {row: by_seed for row, by_seed in per_question.items() if all(by_seed.get(s) for s in seeds)}

    def grid(row: str, metric: str) -> torch.Tensor | None:
        if row not in have or any(metric not in have[row][s] for s in seeds):
            return None
        return torch.tensor([have[row][s][metric] for s in seeds], dtype=torch.float64)

    gumbel_rows = [r for r, o in rows_of.items() if o == "gumbel"]
    pairs = [(r, UNTRAINED) for r in rows_of]
    pairs += [(g, r) for g in gumbel_rows for r in rows_of if r != g and (r not in gumbel_rows or g < r)]
    out: dict = {"rows": {}, "differences": {}}
    for m in metrics:
        for row in [UNTRAINED, *rows_of]:
            a = grid(row, m)
            if a is not None:
                out["rows"].setdefault(row, {})[m] = paired_bootstrap(a)
        for a_row, b_row in pairs:
            a, b = grid(a_row, m), grid(b_row, m)
            if a is not None and b is not None:
                out["differences"].setdefault(f"{a_row} - {b_row}", {})[m] = paired_bootstrap(a, b)
    return out


def format_intervals(summary: dict) -> str:
    """Markdown: each row's metrics and the differences, as mean [lo, hi]; a difference whose interval excludes 0
    is marked with *."""
    iv = summary.get("intervals") or {}
    metrics = sorted({m for row in iv.get("rows", {}).values() for m in row}, key=lambda m: (m[0] != "r", m))
    if not metrics:
        return ""
    head = "| | " + " | ".join(metrics) + " |\n" + "|---" * (len(metrics) + 1) + "|"

    def cell(v: dict | None, mark: bool) -> str:
        if v is None:
            return "–"
        star = "*" if mark and (v["lo"] > 0 or v["hi"] < 0) else ""
        return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]{star}"

    on = (" recall on the questions that have a gold passage of the kind;" if summary.get("labelled", True) else "")
    lines = [f"95% intervals, paired bootstrap over questions and seeds ({', '.join(map(str, summary['seeds']))});"
             f"{on} answer_recall on the questions that are not yes/no; loss_hard in nats/token, lower is better.",
             "", head]
    for row, vals in iv["rows"].items():
        lines.append(f"| {row} | " + " | ".join(cell(vals.get(m), False) for m in metrics) + " |")
    lines += ["", "Differences (* = the interval excludes 0):", "", head]
    for pair, vals in iv["differences"].items():
        lines.append(f"| {pair} | " + " | ".join(cell(vals.get(m), True) for m in metrics) + " |")
    return "\n".join(lines)


def table_columns(ks: list[int], with_labels: bool = True) -> list[tuple[str, str]]:
    """(header, metric key) of compare.md's columns: with is_gold labels the gold columns (recall, NDCG, coverage,
    MRR), then always the label-free ones (answer recall@k, EM, F1, the hard top-k loss) and the soft-hard gap and
    training seconds per question."""
    cols = []
    for kind in KINDS if with_labels else ():
        suffix = "" if kind == "all" else f"_{kind}"
        cols += [(f"R@{k} {kind}", f"recall@{k}{suffix}") for k in ks]
        cols += [(f"NDCG@{k} {kind}", f"ndcg@{k}{suffix}") for k in ks]
        if kind == "all":
            cols += [(f"coverage@{k}", f"coverage@{k}") for k in ks]
        cols.append((f"MRR {kind}", f"mrr{suffix}"))
    cols += [(f"answer R@{k}", f"answer_recall@{k}") for k in ks]
    return cols + [("EM", "em"), ("F1", "f1"), ("hard top-k loss", "loss_hard"), ("gap (hard-soft loss)", "gap"),
                   ("s/query", "s_per_query")]


def format_markdown(summary: dict) -> str:
    """One row per objective, the untrained reranker and the reader-only references; cells are mean ± std."""
    with_labels = summary.get("labelled", True)  # compare.json files written before unlabelled dev data
    cols = table_columns(summary["ks"], with_labels)
    lines = [f"Mean ± std over seeds {', '.join(map(str, summary['seeds']))}; {summary['max_steps']} steps of "
             f"{summary['global_batch']} questions; reader EM/F1 with the top-{summary['reader_k']}; s/query = "
             "training seconds per question.", "", columns_note(summary), "",
             "| row | " + " | ".join(h for h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in summary["rows"].items():
        cells = []
        for _, key in cols:
            if key not in row["mean"]:
                cells.append("–")
                continue
            fmt = ".2e" if key == "s_per_query" else ".3f"
            cells.append(f"{row['mean'][key]:{fmt}} ± {row['std'][key]:{fmt}}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "counts" in summary:
        lines += ["", f"Dev: {checks.format_counts(summary['counts'], summary['n_candidates'])}."]
    ivs = format_intervals(summary)
    text = "\n".join(lines) + ("\n\n" + ivs if ivs else "")
    if summary.get("reader_report"):
        from gr_train.reader_report import format_report

        text += "\n\nReader report on the dev set (does the reader's loss reward the gold passages?):\n\n"
        text += format_report(summary["reader_report"])
    return text


def columns_note(summary: dict) -> str:
    """compare.md's line on its columns: which the dev data's labels allow, what the label-free ones and
    compare.png show."""
    k = plot_k_of(summary)
    if summary.get("labelled", True):
        which = "Gold columns (R@k, NDCG@k, coverage@k, MRR) from the dev data's is_gold labels; the others use none"
        plotted = f"gold recall@{k} (all, indirect)"
    else:
        which = f"Dev data without is_gold labels ({summary['dev_questions']} questions): the label-free columns only"
        plotted = f"answer recall@{k} and the hard top-k loss"
    return (f"{which}. answer R@k = a passage among the top k contains an answer string (yes/no questions not "
            "counted); hard top-k loss = the frozen reader's answer loss (nats/token) reading the top gumbel.k "
            f"passages by score, the dev loss that selects a training run's best/. compare.png: {plotted} over "
            "steps.")


def plot_k(cfg: RunConfig) -> int:
    """The cut-off plotted: the reader's k when it is among eval.ks, else the first of eval.ks."""
    k = cfg.reader_k()
    return k if k in cfg.eval.ks else cfg.eval.ks[0]


def plot_k_of(summary: dict) -> int:
    """plot_k of the config a compare.json summary was made with."""
    return summary["reader_k"] if summary["reader_k"] in summary["ks"] else summary["ks"][0]


def eval_curve(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of scalar `key` in <run_dir>/tb/scalars.jsonl (a resumed run's repeated steps: last wins)."""
    curve = {}
    path = run_dir / "tb" / "scalars.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if key in row:
            curve[row["step"]] = row[key]
    return curve


def plot_panels(k: int, with_labels: bool = True) -> list[tuple[str, str, str]]:
    """compare.png's panels: (metric key of compare.json's rows, scalar of the runs' tb/scalars.jsonl, title). With
    is_gold labels gold recall@k, all and indirect; without, answer recall@k and the hard top-k dev loss (logged
    with train.keep_best, on by default)."""
    if not with_labels:
        return [(f"answer_recall@{k}", f"eval/answer_recall@{k}", f"dev answer recall@{k} (no labels)"),
                ("loss_hard", "eval/dev_loss_hard", "dev hard top-k loss (nats/token; selects best/)")]
    return [(f"recall@{k}", f"eval/recall@{k}", f"dev recall@{k} (all gold)"),
            (f"recall@{k}_indirect", f"eval/recall@{k}_indirect", f"dev recall@{k} (indirect gold)")]


def write_plot(path: Path, out_dir: Path, objectives: list[str], seeds: list[int],
               panels: list[tuple[str, str, str]], untrained: dict) -> None:
    """compare.png: one panel per (metric, scalar, title) of plot_panels, the scalar over steps, mean over seeds
    (band: ± std), one line per objective; step 0 is the untrained reranker's value of the metric, shared by all
    objectives. A recall panel's y axis is [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    for ax, (key, scalar, title) in zip(fig.subplots(1, len(panels)), panels):
        for obj in objectives:
            curves = []
            for s in seeds:
                c = eval_curve(out_dir / obj / f"seed-{s}", scalar)
                c.setdefault(0, untrained["per_seed"][str(s)][key])
                curves.append(c)
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean, std = zip(*(mean_std([c[t] for c in curves]) for t in steps))
            ax.plot(steps, mean, marker="o", markersize=3, label=obj)
            ax.fill_between(steps, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        if "recall@" in key:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"mean ± std over seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
