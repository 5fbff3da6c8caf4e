"""The selection study's tables from its saved runs (bench/collect_study.py's JSON files): per dataset and row, reader
EM with the selected k, fact coverage@2 over all dev questions and over the two-hop questions whose answer passage
does not name the question's work (only the bridge says which answer passage follows: no pointwise reranker can
tell), or, where the dataset has three-hop questions, fact coverage@3 over all and over the three-hop ones (and
coverage@k on those where k is not 3); indirect
recall@k, the label-free dev loss; 95% paired-bootstrap intervals over questions and seeds
(gr_train.stats), differences against the untrained reranker and between rows; and the stability check (each seed's
last-step dev indirect recall@k against its best).

    python bench/selection_report.py docs/study/selection/rows > docs/study/selection/results.md

The dev questions are regenerated from each run's saved synthetic settings and seed (the suite's generator) to tell
one-hop, shortcut and binding questions apart; the regenerated file is checked against the saved per-question values.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import synthetic  # noqa: E402
from gr_train.config import RunConfig, SyntheticSection  # noqa: E402
from gr_train.data import load_records  # noqa: E402
from gr_train.stats import paired_bootstrap  # noqa: E402

UNTRAINED = "untrained"


def per_question(run: dict) -> dict[str, list[float]]:
    """The run's per-question values (the untrained row keeps them at the top level, a trained one under eval)."""
    return run.get("per_question") or run["eval"]["per_question"]


def question_kinds(run: dict, n_questions: int) -> list[str]:
    """one_hop | shortcut | binding | three_hop per dev question, from the dev file regenerated with the run's settings."""
    cfg = run["config"]
    syn = SyntheticSection(**cfg["synthetic"])
    with tempfile.TemporaryDirectory() as tmp:
        # the suite writes each generated dataset with the suite's run.seed (0 unless the config sets it)
        _, dev = synthetic.write_demo_data(syn, Path(tmp), RunConfig().run.seed)
        records = load_records(dev)
    if len(records) != n_questions:
        raise ValueError(f"regenerated dev has {len(records)} questions, the runs {n_questions}")
    return [synthetic.question_kind(rec) for rec in records]


def load(root: Path) -> dict[str, dict[str, dict[int, dict]]]:
    """{dataset: {row: {seed: run}}}."""
    out: dict = {}
    for path in sorted(root.glob("*/*/seed-*.json")):
        dataset, row, seed = path.parts[-3], path.parts[-2], int(path.stem.split("-")[1])
        out.setdefault(dataset, {}).setdefault(row, {})[seed] = json.loads(path.read_text())
    return out


def grid(runs: dict[int, dict], seeds: list[int], key: str, keep: list[bool] | None = None) -> torch.Tensor:
    """[S, Q] of per-question `key` over `seeds`; questions outside `keep` are NaN."""
    rows = []
    for s in seeds:
        values = torch.tensor([float("nan") if v is None else v for v in per_question(runs[s])[key]])
        if keep is not None:
            values[~torch.tensor(keep)] = float("nan")
        rows.append(values)
    return torch.stack(rows)


def start_line(runs: dict[int, dict]) -> str:
    """What the `untrained` row is: the reranker every row of the dataset starts from, before this training."""
    reranker = next(iter(runs.values()))["config"]["reranker"]
    # a seed's own start (a continued run) is named once, with its seed as S; a path outside the repository (another
    # suite's run folder) by its place in that suite's folder
    paths = {str(run["config"]["reranker"].get("name_or_path") or "").replace(f"seed-{s}", "seed-S")
             for s, run in runs.items()}
    path = paths.pop() if len(paths) == 1 else ", ".join(sorted(paths))
    if Path(path).is_absolute():
        path = "<suite folder>/" + "/".join(Path(path).parts[-5:])
    source = f"loaded from `{path}`" if path else "built from `reranker.model_config` (random initialisation)"
    selection = "conditionally (greedy, step by step)" if reranker.get("conditional") else "pointwise (hard top-k)"
    return (f"`{UNTRAINED}` is the {reranker['kind']} every row starts from, before this training: {source}; "
            f"selected {selection}.")


def cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} [{stat['lo']:.3f}, {stat['hi']:.3f}]"


def dataset_report(name: str, rows: dict[str, dict[int, dict]]) -> list[str]:
    any_run = next(iter(next(iter(rows.values())).values()))
    k = any_run["config"]["gumbel"]["k"]
    n_q = len(per_question(any_run)["em"])
    kinds = question_kinds(any_run, n_q)
    one_hop_saved = [v != v for v in per_question(any_run)[f"recall@{k}_indirect"]]  # NaN: no bridge
    if one_hop_saved != [kind == "one_hop" for kind in kinds]:
        raise ValueError(f"{name}: the regenerated dev questions do not match the saved runs")
    binding = [kind == "binding" for kind in kinds]
    shortcut = [kind == "shortcut" for kind in kinds]
    three_hop = [kind == "three_hop" for kind in kinds]
    counts = {kind: kinds.count(kind) for kind in ("one_hop", "shortcut", "binding", "three_hop")}
    lines = [f"## {name} (k={k}; {n_q} dev questions: " + ", ".join(
        f"{n} {kind.replace('_', '-')}" for kind, n in counts.items()
        if n or (kind != "three_hop" and not counts["three_hop"])) + ")", ""]
    if UNTRAINED in rows:
        lines += [start_line(rows[UNTRAINED]), ""]
    known = (UNTRAINED, "pointwise_st", "pointwise_sf", "conditional_st", "conditional_sf", "conditional_sf_kl",
             "conditional_sf_klpw", "emdr",
             "conditional_emdr", "loop", "conditional_loop", "pdist", "conditional_pdist", "adist", "conditional_adist")
    order = [r for r in known if r in rows] + sorted(set(rows) - set(known))
    metrics = [("EM@k", "em", None), ("coverage@2", "coverage@2", None), ("coverage@2, binding", "coverage@2", binding),
               ("coverage@2, shortcut", "coverage@2", shortcut),
               (f"indirect R@{k}", f"recall@{k}_indirect", None),
               (f"indirect R@{k}, binding", f"recall@{k}_indirect", binding)]
    if any(three_hop):  # three gold passages: are they the first 3 picked (and among the k the reader read)?
        metrics = [("EM@k", "em", None), ("coverage@3", "coverage@3", None),
                   ("coverage@3, three-hop", "coverage@3", three_hop)]
        metrics += [(f"coverage@{k}, three-hop", f"coverage@{k}", three_hop)] if k != 3 else []
        metrics += [(f"indirect R@{k}", f"recall@{k}_indirect", None),
                    (f"indirect R@{k}, three-hop", f"recall@{k}_indirect", three_hop)]
    lines += ["| row | seeds | " + " | ".join(m[0] for m in metrics) + " | EM@k per seed | dev loss (hard top-k) |",
              "|---" * (len(metrics) + 4) + "|"]
    for row in order:
        seeds = sorted(rows[row])
        cells = [cell(paired_bootstrap(grid(rows[row], seeds, key, keep))) for _, key, keep in metrics]
        losses = [(rows[row][s].get("rows", {}).get(row) or rows[row][s]["metrics"])["loss_hard"] for s in seeds]
        per_seed = ", ".join(f"{(rows[row][s].get('rows', {}).get(row) or rows[row][s]['metrics'])['em']:.3f}"
                             for s in seeds)
        lines.append(f"| {row} | {','.join(map(str, seeds))} | " + " | ".join(cells)
                     + f" | {per_seed} | {sum(losses) / len(losses):.3f} |")
    lines += ["", "Differences (row minus reference), paired over questions and the seeds both rows have:", "",
              "| row − reference | seeds | " + " | ".join(m[0] for m in metrics) + " |",
              "|---" * (len(metrics) + 2) + "|"]
    pairs = [(r, UNTRAINED) for r in order if r != UNTRAINED]
    pairs += [("conditional_sf", r) for r in ("pointwise_st", "pointwise_sf", "conditional_st", "conditional_emdr",
                                               "conditional_loop", "conditional_pdist", "conditional_adist")
              if r in rows and "conditional_sf" in rows]
    # each baseline on the conditional model against the same baseline on the pointwise one
    pairs += [(f"conditional_{r}", r) for r in ("emdr", "loop", "pdist", "adist")
              if {r, f"conditional_{r}"} <= set(rows)]
    pairs += [("pointwise_sf", "pointwise_st")] if {"pointwise_sf", "pointwise_st"} <= set(rows) else []
    # each variant of conditional_sf (a KL penalty, another kappa, ...) against it
    pairs += [(r, "conditional_sf") for r in order if r.startswith("conditional_sf_") and "conditional_sf" in rows]
    # the two references of the KL penalty, side by side
    # each variant of conditional_sf against the pointwise reranker trained the same way
    pairs += [(r, "pointwise_sf") for r in order if r.startswith("conditional_sf_") and "pointwise_sf" in rows]
    references = ("conditional_sf_klpw", "conditional_sf_kl")
    pairs += [references] if set(references) <= set(rows) else []
    for a, b in pairs:
        seeds = sorted(set(rows[a]) & set(rows[b]))
        if b == UNTRAINED:  # one untrained reranker per seed: pair with the seeds it has
            seeds = [s for s in sorted(rows[a]) if s in rows[b]]
        if not seeds:
            continue
        cells = [cell(paired_bootstrap(grid(rows[a], seeds, key, keep), grid(rows[b], seeds, key, keep)))
                 for _, key, keep in metrics]
        lines.append(f"| {a} − {b} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    every = sorted({run["config"]["train"]["eval_every_steps"] for row, runs in rows.items() if row != UNTRAINED
                    for run in runs.values()})
    stability = (f"Stability: dev indirect R@{k} at the last evaluation and its best over training (every "
                 f"{' or '.join(map(str, every))} steps), per seed; `no collapse` = every seed's last within 0.05 of "
                 "its best.")
    lines += ["", stability, "",
              "| row | per seed: last / best | no collapse |", "|---|---|---|"]
    for row in order:
        if row == UNTRAINED:
            continue
        parts, ok = [], True
        for s in sorted(rows[row]):
            curve = rows[row][s]["curves"].get(f"eval/recall@{k}_indirect", {})
            if not curve:
                continue
            steps = sorted(curve, key=int)
            last, best = curve[steps[-1]], max(curve.values())
            parts.append(f"seed {s}: {last:.3f} / {best:.3f}")
            ok &= best - last <= 0.05
        lines.append(f"| {row} | {'; '.join(parts)} | {'yes' if ok else 'no'} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, help="bench/collect_study.py's destination folder")
    args = p.parse_args()
    lines = ["# Selection study: results", "",
             f"Generated by `python bench/selection_report.py {args.runs}` from the saved runs; configs/"
             "selection_study.yaml holds the settings and the hypotheses. 95% paired-bootstrap intervals over "
             "questions and seeds.", ""]
    for name, rows in load(args.runs).items():
        lines += dataset_report(name, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
