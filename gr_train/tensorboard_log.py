"""Run monitoring: TensorBoard scalars (main rank only), a JSONL copy of every logged scalar, and memory."""

from __future__ import annotations

import json
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricsWriter:
    """Writes scalars to TensorBoard under `<log_dir>` and appends them to `<log_dir>/scalars.jsonl`.

    On non-main ranks every call is a no-op, so the recipe logs unconditionally.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._tb = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.log_dir))
            self._jsonl = open(self.log_dir / "scalars.jsonl", "a")

    def log(self, scalars: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._tb.add_scalar(key, float(value), step)
        self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
