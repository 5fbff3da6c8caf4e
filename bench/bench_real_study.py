"""Cost of the real-data study (configs/real_study.yaml) on this machine, and its wall-time estimate.

    python bench/bench_real_study.py [--questions 4] [--out bench/results/real_study.json]

With the study's own settings (SmolLM2-135M-Instruct reader in the parallel format, MiniLM bi-encoder, k=5, 10
candidates, 1 torch thread, passage states cached on disk) on HotpotQA questions, it times: one reader
fine-tuning step (suite.reader_tuning); the reader's passage encoding per question (paid once per question and
reader: every later visit, by any row, seed or evaluation, reads the states from disk); one training step of every
row with the states on disk (the baselines' first visit of a question computes the reader's targets, a revisit
reads them from memory: both timed); one evaluation question (hard top-5: scores, greedy answer, soft/hard loss),
the untrained reference per question (evaluation + the four reader-only rows) and the reader report per question,
each with the states on disk. Then it multiplies by the study's sizes (MuSiQue's 20 candidates count twice for
every reader pass) and prints the estimate as JSON. Needs `gr-train prepare-models` (models/).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import compare, reader_cache, train  # noqa: E402
from gr_train.batching import collate, passage_states  # noqa: E402
from gr_train.config import apply_override, load_config  # noqa: E402
from gr_train.data import load_any, save_records  # noqa: E402
from gr_train.evaluate import evaluate  # noqa: E402
from gr_train.models import build_models  # noqa: E402
from gr_train.reader_report import reader_report  # noqa: E402
from gr_train.suite import dataset_config, tuning_config  # noqa: E402


def step_times(cfg, steps: int) -> list[float]:
    """Seconds of each optimizer step of a fresh run of cfg (time/step as the recipe logs it)."""
    times: list[float] = []
    train.main(cfg, resume=False, on_step=lambda step, scalars: times.append(scalars["time/step"]))
    reader_cache.clear()
    return times


def per_question(fn, q: int) -> float:
    """Seconds of fn() divided by q."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / q


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "real_study.yaml"))
    p.add_argument("--questions", type=int, default=4, help="questions per measurement (one micro-batch)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "real_study.json"))
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-real-"))
    base = load_config(args.config, ["objective.cache_passage_states=true",
                                     f"objective.passage_state_dir={tmp / 'states'}"])
    torch.set_num_threads(base.run.num_threads)
    q = args.questions
    sizes = {}
    for name, spec in base.suite.datasets.items():
        dcfg, n_train, n_dev = dataset_config(base, name, spec, tmp / "data")
        sizes[name] = {"train": n_train, "dev": n_dev, "n_candidates": dcfg.data.n_candidates}
    hot, _, _ = dataset_config(base, "hotpotqa", base.suite.datasets["hotpotqa"], tmp / "data")
    train_records = load_any(hot.data.train_path)[:q]
    dev = load_any(hot.data.dev_path)[:q]
    small = tmp / "train.jsonl"
    save_records(train_records, small)
    out: dict = {"questions": q, "threads": torch.get_num_threads(), "sizes": sizes}

    # reader fine-tuning: 2 steps of q questions (the first one includes nothing the second does not)
    rcfg = tuning_config(base, small, tmp / "reader")
    out["reader_tuning_steps"] = rcfg.train.max_steps
    rcfg.train.max_steps, rcfg.train.micro_batch_size, rcfg.train.save_every_steps = 2, q, 0
    out["reader_tuning_step_s"] = step_times(rcfg, 2)

    # the reader's passage encoding, once per question: here the training and dev questions' states go to disk
    torch.manual_seed(0)
    reader, reranker = build_models(hot)
    out["encode_question_s"] = per_question(
        lambda: passage_states(collate(train_records, hot.data.n_candidates, None, reader), reader, hot), q)
    passage_states(collate(dev, hot.data.n_candidates, None, reader), reader, hot)

    # one step per row, states on disk: step 0 visits q questions for this row (the baselines' targets), step 1
    # the same ones again (targets in memory)
    out["row_step_s"] = {}
    for label, obj in compare.parse_rows(list(base.suite.objectives)).items():
        cfg = copy.deepcopy(hot)
        cfg.objective.name, cfg.run.run_dir = obj, str(tmp / label)
        cfg.data.train_path = str(small)
        for text in base.suite.row_overrides.get(label, []):
            apply_override(cfg, text)
        cfg.train.max_steps, cfg.train.micro_batch_size, cfg.train.save_every_steps = 2, q, 0
        cfg.train.eval_every_steps = 0
        cfg.data.shuffle = False
        out["row_step_s"][label] = step_times(cfg, 2)

    # evaluation, reference rows and the reader report, per question, states on disk (untrained reranker)
    out["eval_question_s"] = per_question(lambda: evaluate(hot, reranker, reader, dev), q)
    out["report_question_s"] = per_question(lambda: reader_report(reader, dev, hot), q)
    ref_cfg = copy.deepcopy(hot)
    ref_cfg.eval.reader_report = False
    out["reference_question_s"] = per_question(
        lambda: compare.reference_runs(ref_cfg, 0, dev, tmp / "ref", with_report=False), q)
    out["estimate"] = estimate(out, base)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def estimate(m: dict, base) -> dict:
    """Wall-time estimate of `gr-train suite --config configs/real_study.yaml` in hours, from the measurements m.
    Reader-side costs scale with the candidates (MuSiQue: 20 = x2). Passage encoding is paid once per question and
    reader (the packaged one for the report before, the fine-tuned one for everything else); a baseline's first
    visit of a question costs its targets once per process (shared by both seeds)."""
    seeds, steps, mb = len(base.suite.seeds), base.train.max_steps, base.train.micro_batch_size
    rows = compare.parse_rows(list(base.suite.objectives))
    hours = {"reader_tuning": m["reader_tuning_steps"] * m["reader_tuning_step_s"][-1] / 3600}
    for name, size in m["sizes"].items():
        scale = size["n_candidates"] / base.data.n_candidates
        visited = min(size["train"], steps * mb)
        t = (visited + 2 * size["dev"]) * m["encode_question_s"] * scale  # dev: with both readers
        t += size["dev"] * m["report_question_s"] * scale * 2  # report before and after fine-tuning
        t += seeds * size["dev"] * m["reference_question_s"] * scale  # untrained + reader-only rows
        for label in rows:
            first, again = m["row_step_s"][label]
            t += seeds * (steps * again * scale + size["dev"] * m["eval_question_s"] * scale)
            if first > again * 1.5:  # reader targets, computed once per training question it visits
                t += visited * (first - again) / mb * scale
        hours[name] = t / 3600
    hours["total"] = sum(hours.values())
    return hours


if __name__ == "__main__":
    main()
