"""Helpers shared by several test modules (not part of the library)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# The recipe of the tests written for the pointwise straight-through reranker (configs/demo.yaml's before the demo
# moved to conditional selection with the score-function estimator and the KL penalty): one mask per question,
# kappa 10, tau 0.5, no KL penalty (it is of the sequential path).
# Conditional selection has tests of its own (test_selection.py, test_distributed.py, test_demo.py).
POINTWISE_STRAIGHT_THROUGH = ["reranker.conditional=false", "gumbel.estimator=straight_through", "gumbel.samples=1",
                              "gumbel.kappa=10.0", "gumbel.tau=0.5", "gumbel.kl_coef=0"]


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Read back the TensorBoard event files of `log_dir`: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def nan_loss_on_steps(recipe, steps: set[int]):
    """(step_noise, answer_loss): wrappers of gr_train.train.step_noise and recipe.reader.answer_loss under which the
    reader's answer loss is NaN during the optimizer steps in `steps` (as an fp16 overflow would be). step_noise is
    called once at the start of every step, so it tells the loss which step it is in; the caller installs both."""
    from gr_train import train

    current = {}
    real_noise, real_loss = train.step_noise, recipe.reader.answer_loss

    def step_noise(cfg, step, global_batch):
        current["step"] = step
        return real_noise(cfg, step, global_batch)

    def answer_loss(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if current.get("step") in steps else loss

    return step_noise, answer_loss



def strip_labels(source: str | Path, target: str | Path) -> Path:
    """A copy of the FiD JSONL file `source` at `target` with every passage's is_gold removed (unlabelled data:
    has_answer and everything else kept)."""
    import json

    rows = [json.loads(line) for line in Path(source).read_text().splitlines()]
    for row in rows:
        for ctx in row["ctxs"]:
            ctx.pop("is_gold", None)
    Path(target).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Path(target)


def answers_once(pool, batches: list[list[tuple[str, str]]], k: int = 5, fault_after: int | None = None,
                 fault=None) -> dict[str, tuple[list, list]]:
    """Stream (id, question) batches through a ray_jobs.retrieve.ShardPool: {id: (hit ids, hit scores)}, asserting
    that no question is answered twice; `fault()` is called once `fault_after` batches are answered (a kill)."""
    out = {}
    stream = pool.stream(((b, [q for _, q in batch]) for b, batch in enumerate(batches)), k=k)
    for done, (b, hits) in enumerate(stream, start=1):
        for row, (qid, _) in enumerate(batches[b]):
            assert qid not in out, f"{qid} answered twice"
            out[qid] = (hits.ids[row].tolist(), hits.scores[row].tolist())
        if done == fault_after:
            fault()
    return out


def bench_script(name: str):
    """bench/<name>.py as a module (bench/ is not a package; a dataclass in it needs it in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = sys.modules.setdefault(name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module
