"""docs/scaling.md's tables and docs/scaling.png: configs/bge_llama.yaml's predicted epoch over HotpotQA train with its
1B reader and with Llama-3.1-8B, on 8, 16 and 64 H100s (1, 2, 8 nodes), under ZeRO-3, with a replicated reader and
with hpZ, at the config's micro-batch of 8 per GPU and at its global batch of 128; from the step cost model of
`gr-train plan` (gr_train/plan.py, cost.py). Arithmetic only: seconds on a CPU.

    python bench/scaling_table.py                      # rewrites the tables in docs/scaling.md and docs/scaling.png
    python bench/scaling_table.py --print              # the tables on stdout, nothing written
    python bench/scaling_table.py --hardware h200      # another hardware.py entry: printed only (the doc is H100's)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import cost, hardware, plan  # noqa: E402
from gr_train.config import load_config  # noqa: E402

CONFIG = REPO / "configs" / "bge_llama.yaml"
QUESTIONS = 90_447  # HotpotQA train (hotpot_train_v1.1.json)
READERS = {"Llama-3.2-1B": [], "Llama-3.1-8B": ["reader.name_or_path=meta-llama/Llama-3.1-8B"]}
CLUSTERS = [(8, 1), (16, 2), (64, 8)]  # (GPUs, nodes), 8 GPUs a node
MODES = {"zero3": "ZeRO-3", "replicated": "replicated reader", "hpz": "ZeRO-3 + hpZ"}
GLOBAL_BATCH = 128  # the config's 16 ranks x micro-batch 8, which its header says to keep when the GPU count changes
DOC, PLOT = REPO / "docs" / "scaling.md", REPO / "docs" / "scaling.png"


@dataclass
class Row:
    """One cell of the grid: a reader on a cluster in one mode, as plan predicts it."""

    reader: str
    gpus: int
    nodes: int
    mode: str  # a MODES key
    plan: plan.Plan
    prediction: cost.Prediction  # plan.prediction, less the reader's all-gathers for "replicated"

    @property
    def fits(self) -> bool:
        return self.prediction.memory["peak"] <= self.plan.hardware.memory_bytes

    @property
    def epoch_s(self) -> float:
        return cost.epoch_seconds(self.prediction, QUESTIONS)


def without_reader_gathers(pred: cost.Prediction, world: int, peak_flops: float) -> cost.Prediction:
    """`pred` with the reader whole on every rank: the reader's all-gathers (prefill and answer parts) dropped, every
    other term as ZeRO-3 computes it. cost.zero3_traffic charges them whatever runtime.partition_reader says (only
    memory_per_rank reads it), so a replicated reader's time is derived here."""
    keep = [(c, s) for c, s in zip(pred.collectives, pred.collective_s)
            if not (c.op == "all_gather" and c.part in ("prefill", "answer_fwd", "answer_bwd"))]
    comm = {p: sum(s for c, s in keep if c.part == p) for p in cost.PARTS}
    step = sum(pred.compute_s.values()) + sum(comm.values()) + pred.optimizer_s + pred.host_s
    tokens = pred.reader_tokens_per_s * pred.step_s
    flops = sum(pred.flops.values()) * world
    return dataclasses.replace(pred, collectives=[c for c, _ in keep], collective_s=[s for _, s in keep],
                               comm_s=comm, step_s=step, reader_tokens_per_s=tokens / step,
                               mfu=flops / (step * world * peak_flops))


def grid(hw: hardware.Hardware, global_batch: int | None = None, readers=tuple(READERS), clusters=tuple(CLUSTERS),
         modes=tuple(MODES)) -> list[Row]:
    """Every (reader, cluster, mode) of a table: ZeRO-3 as configured; the replicated reader
    (runtime.partition_reader=false: the whole reader in memory, and no reader gathers); hpZ on multi-node clusters.
    The config's train.micro_batch_size (8) per GPU, or global_batch // GPUs questions when global_batch is given."""
    rows = []
    for reader in readers:
        for gpus, nodes in clusters:
            batch = [f"train.micro_batch_size={global_batch // gpus}"] if global_batch else []
            for mode in modes:
                if mode == "hpz" and nodes == 1:
                    continue  # one node: the secondary partition is the primary
                extra = ["runtime.partition_reader=false"] if mode == "replicated" else []
                p = plan.plan(load_config(CONFIG, [*READERS[reader], *batch, *extra]), gpus, nodes, hw, QUESTIONS,
                              hpz=mode == "hpz")
                pred = p.prediction
                if mode == "replicated":
                    pred = without_reader_gathers(pred, gpus, hw.peak(p.cfg.runtime.precision))
                rows.append(Row(reader, gpus, nodes, mode, p, pred))
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def table(rows: list[Row]) -> str:
    """The Markdown table: one line per row; a row that does not fit gives its memory only."""
    gib = rows[0].plan.hardware.memory_bytes / 2**30
    lines = ["| reader | GPUs (nodes) | mode | micro-batch (global) | step (s) | bottleneck (share of the step) "
             f"| epoch | MFU | peak memory per rank (GiB of {gib:.1f}) | largest micro-batch that fits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pr, mem = r.prediction, r.prediction.memory["peak"] / 2**30
        head = f"| {r.reader} | {r.gpus} ({r.nodes}) | {MODES[r.mode]} | {r.plan.shape.B} ({pr.global_batch}) |"
        if not r.fits:
            lines.append(f"{head} does not fit | – | – | – | {mem:.1f} | {r.plan.largest_micro_batch or 'none'} |")
            continue
        share = max(pr.terms().values()) / pr.step_s
        lines.append(f"{head} {pr.step_s:.3f} | {pr.bottleneck()} ({share:.0%}) | {_duration(r.epoch_s)} | "
                     f"{pr.mfu:.1%} | {mem:.1f} | {r.plan.largest_micro_batch} |")
    return "\n".join(lines)


EPOCH_TICKS = (1, 2, 5, 10, 20, 50, 100)  # minutes


def write_plot(panels: list[tuple[str, list[Row]]], path: Path) -> None:
    """Epoch time against GPUs (log x and y), one line per reader x mode, one panel per (title, rows); rows that do
    not fit are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    styles = {"zero3": "-", "replicated": "--", "hpz": ":"}
    colours = dict(zip(READERS, ("tab:blue", "tab:orange")))
    axes = fig.subplots(1, len(panels), sharey=True)
    for ax, (title, rows) in zip(axes, panels):
        for reader in READERS:
            for mode in MODES:
                pts = [(r.gpus, r.epoch_s / 60) for r in rows if r.reader == reader and r.mode == mode and r.fits]
                if pts:  # hpZ: open squares, as its line lies on ZeRO-3's
                    ax.plot(*zip(*pts), styles[mode], marker="s" if mode == "hpz" else "o",
                            markersize=9 if mode == "hpz" else 4, fillstyle="none" if mode == "hpz" else "full",
                            color=colours[reader], label=f"{reader}, {MODES[mode]}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([g for g, _ in CLUSTERS], [f"{g}\n({n} node{'s' if n > 1 else ''})" for g, n in CLUSTERS])
        ax.minorticks_off()
        ax.set_yticks(EPOCH_TICKS, [f"{t:g}" for t in EPOCH_TICKS])
        ax.set_xlabel("H100 GPUs")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted epoch (min)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"configs/bge_llama.yaml on HotpotQA train ({QUESTIONS:,} questions): cost-model prediction, not a "
                 "measurement", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- scaling_table.py {name}: begin -->", f"<!-- scaling_table.py {name}: end -->"


def write_doc(tables: dict[str, str], path: Path) -> None:
    """Replace what lies between each name's markers in `path` with its table (ValueError when a pair is missing)."""
    doc = path.read_text()
    for name, text in tables.items():
        begin, end = markers(name)
        if begin not in doc or end not in doc:
            raise ValueError(f"{path}: no {begin} ... {end} markers")
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", doc, flags=re.S)
    path.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hardware", default="h100", choices=list(hardware.HARDWARE),
                    help="a gr_train/hardware.py entry; other than h100 the tables are printed only")
    ap.add_argument("--print", action="store_true", help="print the tables; write neither the doc nor the plot")
    args = ap.parse_args()
    hw = hardware.get(args.hardware)
    per_gpu, fixed = grid(hw), grid(hw, global_batch=GLOBAL_BATCH)
    tables = {"per_gpu": table(per_gpu), "global_batch": table(fixed)}
    print("\n\n".join(tables.values()))
    if not args.print and args.hardware == "h100":
        write_doc(tables, DOC)
        write_plot([("micro-batch 8 per GPU (the config's)", per_gpu),
                    (f"global batch {GLOBAL_BATCH} (micro-batch {GLOBAL_BATCH} / GPUs)", fixed)], PLOT)
        print(f"wrote {DOC.relative_to(REPO)} (tables) and {PLOT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
