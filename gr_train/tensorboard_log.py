"""Run monitoring: TensorBoard scalars (main rank only), a JSONL copy of every logged scalar, and memory."""

from __future__ import annotations

import json
import os
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricsWriter:
    """Writes scalars to TensorBoard under `<log_dir>` and appends them to `<log_dir>/scalars.jsonl`.

    On non-main ranks every call is a no-op, so the recipe logs unconditionally.

    resume_step: the step of the checkpoint a resumed run starts from. What the interrupted run logged at or after
    it is dropped, in TensorBoard (SummaryWriter purge_step: readers discard the older events of those steps) and
    in scalars.jsonl (rewritten atomically), and the checkpoint step's own scalars are logged again from
    scalars.jsonl, less the keys starting with one of `relogged` (the resumed run logs those itself), so every step
    is in both logs once whatever was logged before the interruption.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 relogged: tuple[str, ...] = ()):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._tb = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            again = self._truncate(resume_step, relogged) if resume_step is not None else []
            self._tb = SummaryWriter(str(self.log_dir), purge_step=resume_step)
            self._jsonl = open(self.log_dir / "scalars.jsonl", "a")
            for row in again:
                self.log(row, resume_step)

    def _truncate(self, step: int, relogged: tuple[str, ...]) -> list[dict[str, float]]:
        """Keep the scalars.jsonl rows before `step` (a temporary file renamed over it); return the rows at `step`."""
        path = self.log_dir / "scalars.jsonl"
        if not path.is_file():
            return []
        kept, again = [], []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if row.get("step", step + 1) < step:
                kept.append(line)
            elif row.get("step") == step:
                values = {k: v for k, v in row.items() if k != "step" and not k.startswith(relogged)}
                if values:
                    again.append(values)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return again

    def log(self, scalars: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._tb.add_scalar(key, float(value), step)
        # flushed with every call (every train.log_every_steps): a kill then loses no step it logged
        self._tb.flush()
        self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
