"""The demo: the whole method in miniature on the embedded multi-hop data, on CPU in a few minutes.

generate train/dev questions → load (or train) the frozen demo reader → reader EM with all / gold / direct /
no passages → evaluate the untrained reranker → G-Rerank training from the LM loss alone → evaluate again →
`<run_dir>/results.json`, a printed table, TensorBoard logs in `<run_dir>/tb`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from gr_train import synthetic, train
from gr_train.config import RunConfig, load_config
from gr_train.evaluate import evaluate, format_table, reader_reference

log = logging.getLogger("gr_train.demo")

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SHIPPED_READER = PACKAGE_DIR / "assets" / "demo_reader"
READER_CONFIG = REPO_DIR / "configs" / "demo_reader.yaml"


def reader_folder(cfg: RunConfig) -> Path:
    """The frozen demo reader to use: the shipped (or configured) one, trained first when absent or asked for."""
    path = Path(cfg.demo.reader_path) if cfg.demo.reader_path else SHIPPED_READER
    if (path / "model.safetensors").is_file() and not cfg.demo.train_reader:
        return path
    rcfg = load_config(cfg.demo.reader_config or READER_CONFIG,
                       [f"run.run_dir={Path(cfg.run.run_dir) / 'reader'}", f"run.progress={cfg.run.progress}"])
    log.info("training the demo reader (%d steps) into %s", rcfg.train.max_steps, rcfg.run.run_dir)
    out = train.main(rcfg, resume=True)
    return Path(out["final"]) / "reader"


def run(cfg: RunConfig) -> dict:
    run_dir = Path(cfg.run.run_dir)
    train_path, dev_path = synthetic.write_demo_data(cfg.synthetic, run_dir / "data", cfg.run.seed)
    cfg.data.train_path, cfg.data.dev_path = str(train_path), str(dev_path)
    cfg.reader.name_or_path = str(reader_folder(cfg))
    cfg.reader.kind = "demo_fid"

    recipe = train.setup(cfg, resume=False)
    dev = recipe.dev_records
    if cfg.eval.max_questions:
        dev = dev[: cfg.eval.max_questions]
    two_hop = [r for r in dev if r.intermediate]
    results: dict = {"reader_em": {"all_questions": reader_reference(recipe.reader, dev),
                                   "two_hop": reader_reference(recipe.reader, two_hop)}}
    results["untrained"] = evaluate(cfg, recipe.reranker, recipe.reader, dev, cfg.run.progress)
    results["untrained_two_hop"] = evaluate(cfg, recipe.reranker, recipe.reader, two_hop)
    last = train.train(recipe)
    train.save_checkpoint(recipe)
    train.cleanup(recipe)
    results["trained"] = evaluate(cfg, recipe.reranker, recipe.reader, dev, cfg.run.progress)
    results["trained_two_hop"] = evaluate(cfg, recipe.reranker, recipe.reader, two_hop)
    results["training"] = {k: v for k, v in last.items() if k.startswith(("train/", "perf/"))}
    results["config"] = {"estimator": cfg.gumbel.estimator, "k": cfg.gumbel.k, "tau": cfg.gumbel.tau,
                         "tau_end": cfg.gumbel.tau_end, "synthetic": dataclasses.asdict(cfg.synthetic),
                         "kappa": cfg.gumbel.kappa, "reranker": cfg.reranker.kind,
                         "max_steps": cfg.train.max_steps, "reader": cfg.reader.name_or_path}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    table = format_table({name: results[name] for name in ("untrained", "trained", "untrained_two_hop",
                                                           "trained_two_hop")}, cfg.eval.ks)
    (run_dir / "results.md").write_text(table + "\n")
    em = results["reader_em"]["two_hop"]
    print(f"\nDemo reader exact match on two-hop dev questions: all passages {em['all']:.2f}, all but the bridge "
          f"{em['no_indirect']:.2f}, gold only {em['gold']:.2f}, direct only {em['direct']:.2f}, none {em['none']:.2f}")
    tau = f"{cfg.gumbel.tau}" + ("" if cfg.gumbel.tau_end is None else f"->{cfg.gumbel.tau_end}")
    print(f"Reranker before/after G-Rerank ({cfg.gumbel.estimator}, {cfg.train.max_steps} steps, k={cfg.gumbel.k}, "
          f"kappa={cfg.gumbel.kappa}, tau={tau}); reader EM uses the top-{cfg.reader_k()}:")
    print(table)
    if not results["trained"]["scores"]["separated"]:
        print("WARNING: the trained reranker's scores did not separate (median per-question std "
              f"{results['trained']['scores']['w_std_median']:.4f}); try a larger gumbel.kappa")
    print(f"\nresults: {run_dir / 'results.json'}   TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return results
