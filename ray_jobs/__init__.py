"""Ray entrypoints, run with `ray job submit ... -- python -m ray_jobs.<job> --config FILE [section.key=value ...]`:
build_index (one task per shard), preprocess (Ray Data + shard actors), evaluate, train. Ray is imported only here."""

from __future__ import annotations


def start_job(module: str, doc: str, argv: list[str] | None, add_arguments=None):
    """The shared start of the data-plane entrypoints: logging, `--config FILE [section.key=value ...]` (plus
    the job's own flags via `add_arguments(parser)`), the config, and a Ray connection (inside `ray job submit`
    it joins the cluster; elsewhere it starts a local one). Returns (args, cfg)."""
    import argparse
    import logging

    import ray

    from gr_train.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{module}", description=doc.split("\n")[0])
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not ray.is_initialized():
        ray.init()
    return args, cfg
