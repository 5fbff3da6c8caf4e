"""Ray entrypoints, run with `ray job submit ... -- python -m ray_jobs.<job> --config FILE [section.key=value ...]`:
build_index (one task per shard), retrieve (shard actors → FiD JSONL), preprocess (Ray Data + shard actors),
evaluate, train. Ray is imported only here. `local_ray` starts a token-authenticated Ray inside a process
(`gr-train demo`); `command_ray` gives `gr-train index --ray` and `gr-train retrieve --ray` theirs."""

from __future__ import annotations

import contextlib
import secrets


def start_job(module: str, doc: str, argv: list[str] | None, add_arguments=None, check=None):
    """The shared start of the data-plane entrypoints: logging, `--config FILE [section.key=value ...]` (plus
    the job's own flags via `add_arguments(parser)`), the config, the job's checks (`check(args, cfg)`, raising
    one of gr_train.checks.USER_ERRORS) before Ray starts, and a Ray connection (inside `ray job submit` it joins
    the cluster; elsewhere it joins a running local head or starts a local Ray), with token authentication
    (token_auth). Returns (args, cfg)."""
    import argparse
    import logging

    import ray

    from gr_train.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The module's whole docstring: what the job does, the command that submits it, what it reads and writes.
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides anywhere among the flags, as gr-train takes them
    cfg = load_config(args.config, args.overrides)
    if check is not None:
        check(args, cfg)
    if not ray.is_initialized():
        token_auth()  # a local Ray this starts (no RAY_ADDRESS, no running head) listens with authentication
        ray.init()
    return args, cfg


def run_job(prog: str, main) -> int:
    """`main()` of an entrypoint run as `prog` (e.g. `python -m ray_jobs.preprocess`); a user's mistake
    (gr_train.checks.USER_ERRORS: a config key, a data record, a missing file) ends in one `<prog>: error: ...`
    line and exit code 2, as the gr-train commands do."""
    import sys

    from gr_train import checks

    try:
        main()
    except checks.USER_ERRORS as e:
        print(f"{prog}: error: {checks.one_line(e)}", file=sys.stderr)
        return 2
    return 0


def token_auth() -> None:
    """Token authentication for the Ray this process starts or joins, set in this process's environment (Ray's
    workers inherit it): RAY_AUTH_MODE=token unless the environment sets a mode (another mode is logged as a
    warning), and, when no token is configured (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or Ray's ~/.ray/auth_token), a
    random 256-bit one kept in the environment only (nothing written to ~/.ray). Ray reads the mode when it is
    imported: it is read again here when Ray was imported first. A plain `ray.init()` without an address starts a
    local Ray when no head runs on this machine: it then listens with this token (Ray 2.60's own default would
    write a generated token to ~/.ray/auth_token, world-readable; older Rays default to no authentication)."""
    import logging
    import os
    import sys
    from pathlib import Path

    mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    if mode != "token":
        logging.getLogger("ray_jobs").warning("RAY_AUTH_MODE=%s: Ray runs without token authentication", mode)
    elif not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
              or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "ray" in sys.modules:  # Ray reads the auth mode at import: re-read it when imported earlier
        from ray._raylet import Config

        Config.initialize("")


@contextlib.contextmanager
def local_ray(num_cpus: int, dashboard: bool = False):
    """A Ray instance started in this process for the length of the `with` block, stopped on exit, error included.

    Token authentication is on (RAY_AUTH_MODE=token) with the caller's RAY_AUTH_TOKEN, or a fresh random one
    (256 bits) kept in this process's environment only (inherited by the workers; nothing written to ~/.ray). The
    dashboard is off, or on 127.0.0.1 with `dashboard=True`; usage statistics are off. Raises RuntimeError when a
    Ray connection already exists in this process (it would be reused with its own settings).
    """
    import os

    os.environ["RAY_AUTH_MODE"] = "token"
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # this Ray's own: not the user's token file's
    token_auth()
    import ray

    if ray.is_initialized():
        raise RuntimeError("local_ray: Ray is already initialised in this process")
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=False,
             configure_logging=True, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def command_ray(rcfg, n_shards: int):
    """Ray for a `gr-train index --ray` or `gr-train retrieve --ray` run, for the length of the `with` block.

    The connection this process already has, left open (tests); else the cluster in RAY_ADDRESS, joined as
    start_job joins it and left at the end; else a local Ray with token authentication (local_ray), stopped at the
    end, error included, with CPUs for one actor per shard: n_shards (the index's, for retrieve) x
    retrieval.shard_num_cpus, and at least this machine's cores (shard actors that do not all fit would wait
    forever: the placement group of 3 one-CPU shards on a 2-CPU local Ray never became ready).
    """
    import math
    import os
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        yield ray
        return
    if os.environ.get("RAY_ADDRESS"):
        import ray

        ray.init()
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    with local_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(n_shards * rcfg.shard_num_cpus))) as ray:
        yield ray
