"""bench/collect_study.py: a suite's finished runs saved into the repository and restored on another machine, in
another folder, count as finished there (the suite compares the whole config, paths included, before it skips one)."""

import json
from pathlib import Path

import pytest

from gr_train import compare
from gr_train.config import ConfigError, RunConfig, to_dict
from helpers import bench_script


def _collect_study():
    return bench_script("collect_study")


def _cfg(suite: Path, start: str) -> RunConfig:
    """The config the suite gives run demo_k2/conditional_sf/seed-0 under `suite`."""
    cfg = RunConfig()
    cfg.run.run_dir = str(suite / "demo_k2" / "conditional_sf" / "seed-0")
    cfg.data.train_path = str(suite / "demo_k2" / "data" / "train.jsonl")
    cfg.data.dev_path = str(suite / "demo_k2" / "data" / "dev.jsonl")
    cfg.reranker.name_or_path = start
    return cfg


def test_a_run_restored_into_another_folder_counts_as_finished_there(tmp_path):
    collect_study = _collect_study()
    old, new = tmp_path / "machine_a" / "suite", tmp_path / "machine_b" / "elsewhere"
    start = str(tmp_path / "machine_a" / "other_suite" / "final" / "reranker")  # outside the suite: kept
    run_dir = Path(_cfg(old, start).run.run_dir)
    (run_dir / "tb").mkdir(parents=True)
    result = {"metrics": {"em": 0.5}, "config": to_dict(_cfg(old, start))}
    (run_dir / compare.RESULT_FILE).write_text(json.dumps(result))
    (run_dir / "tb" / "scalars.jsonl").write_text(json.dumps({"step": 60, "eval/coverage@2": 0.25}) + "\n")

    rows = tmp_path / "rows"
    assert collect_study.collect(old, rows) == [rows / "demo_k2" / "conditional_sf" / "seed-0.json"]
    saved = json.loads((rows / "demo_k2" / "conditional_sf" / "seed-0.json").read_text())
    assert saved["curves"] == {"eval/coverage@2": {"60": 0.25}} and saved["metrics"] == {"em": 0.5}

    restored = collect_study.restore(new, rows)
    assert restored == [new / "demo_k2" / "conditional_sf" / "seed-0" / compare.RESULT_FILE]
    config = json.loads(restored[0].read_text())["config"]
    assert config["run"]["run_dir"] == str(new.resolve() / "demo_k2" / "conditional_sf" / "seed-0")
    assert config["data"]["dev_path"] == str(new.resolve() / "demo_k2" / "data" / "dev.jsonl")
    assert config["reranker"]["name_or_path"] == start
    cfg = _cfg(new.resolve(), start)
    assert compare.load_result(Path(cfg.run.run_dir), cfg)["metrics"] == {"em": 0.5}
    cfg.optim.lr *= 2  # anything else that differs still makes it another run
    with pytest.raises(ConfigError, match=compare.RESULT_FILE):
        compare.load_result(Path(cfg.run.run_dir), cfg)
    assert collect_study.restore(new, rows) == []  # a run already there is left alone
