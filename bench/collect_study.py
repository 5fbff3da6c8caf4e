"""Copy each finished run of a suite folder (`gr-train suite --out DIR`) into the repository as a small JSON: its
metrics, per-question values (4 decimals, for paired intervals), dev curves (eval/* per step, from
tb/scalars.jsonl) and config. A long study survives a change of machine through these files; `--restore` writes them
back as compare_result.json, so that `gr-train suite` on a new machine skips the finished runs.

    python bench/collect_study.py runs/selection_study docs/study/selection/rows            # collect
    python bench/collect_study.py runs/selection_study docs/study/selection/rows --restore  # restore
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULT_FILE = "compare_result.json"  # compare.RESULT_FILE (not imported: this script runs without torch)
# the dev curves kept: fact coverage, recall and indirect recall at every evaluated k, and the label-free dev loss
CURVE_KEY = re.compile(r"eval/(coverage@\d+|recall@\d+(_indirect)?|dev_loss_hard)")


def _round(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """{eval key: {step: value}} from the run's scalars.jsonl (a resumed run's repeated steps: last wins)."""
    out: dict[str, dict[int, float]] = {}
    path = run_dir / "tb" / "scalars.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if CURVE_KEY.fullmatch(key):
                out.setdefault(key, {})[int(row["step"])] = round(float(value), 4)
    return out


def collect(suite_dir: Path, dest: Path) -> list[Path]:
    written = []
    for result in sorted(suite_dir.glob(f"*/*/seed-*/{RESULT_FILE}")):
        run_dir = result.parent
        dataset, row, seed = run_dir.parts[-3], run_dir.parts[-2], run_dir.parts[-1]
        out = dest / dataset / row / f"{seed}.json"
        data = json.loads(result.read_text())
        # the config stays exact: the suite compares it with its own before it skips a restored run
        data = {**{k: v if k == "config" else _round(v) for k, v in data.items()}, "curves": curves(run_dir)}
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, separators=(",", ":")) + "\n"
        if not out.is_file() or out.read_text() != text:
            out.write_text(text)
            written.append(out)
    return written


def reroot(value, old: str, new: str):
    """value (a config, nested) with every path under the folder `old` moved under `new`."""
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    if isinstance(value, list):
        return [reroot(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: reroot(v, old, new) for k, v in value.items()}
    return value


def restore(suite_dir: Path, dest: Path) -> list[Path]:
    """Each saved run written back as suite_dir/DATASET/ROW/seed-S/compare_result.json. Its config's paths under the
    suite folder it ran in (the run folder, the generated data) are moved under suite_dir, as the suite run there will
    set them: the suite compares the whole config before it skips a finished run, and a new machine's folder differs.
    Paths outside that folder (another suite's run as a start) are kept."""
    written = []
    for saved in sorted(dest.glob("*/*/seed-*.json")):
        dataset, row, seed = saved.parts[-3], saved.parts[-2], saved.stem
        target = suite_dir / dataset / row / seed / RESULT_FILE
        if target.is_file():
            continue
        data = json.loads(saved.read_text())
        data.pop("curves", None)
        if data.get("config", {}).get("run", {}).get("run_dir"):
            old_root = str(Path(data["config"]["run"]["run_dir"]).parents[2])  # ROOT/DATASET/ROW/seed-S
            data["config"] = reroot(data["config"], old_root, str(suite_dir.resolve()))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=2))
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--restore", action="store_true", help="write the saved runs back into suite_dir")
    args = parser.parse_args()
    paths = (restore if args.restore else collect)(args.suite_dir, args.dest)
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
