"""CPU thread policy: how many torch / OpenMP / MKL threads each process of a run uses (`run.num_threads`).

Two OpenMP threads spin-waiting on a core that another process also wants make every parallel region wait for the
slowest thread: on a 2-core machine with one other busy process the demo measured 4.2 s per step with torch's
default (one thread per core) against 0.2-0.25 s with one thread (BENCHMARKS.md, "Thread policy"). So the
automatic choice (`run.num_threads=0`) counts the cores this process may run on (its affinity mask), subtracts
the cores other work keeps busy (the 1-minute load average, less this job's own running processes), and shares
the rest among the job's processes on this machine (LOCAL_WORLD_SIZE ranks or Ray workers), never giving
ranks x threads more than the cores.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("gr_train.threads")

# Environment variables read by OpenMP, MKL and OpenBLAS when a process starts: set for this process (before
# torch starts its pool) and inherited by every child it launches (ranks, Ray workers).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def choose_threads(cores: int, ranks: int = 1, busy: float = 0.0) -> int:
    """Threads per process, >= 1.

    Args:
        cores: CPUs this process may run on (len(os.sched_getaffinity(0))), >= 1.
        ranks: processes of this job sharing those CPUs (ranks or Ray workers on this machine), >= 1.
        busy: CPUs kept busy by other work (load average not counting this job), >= 0; rounded to the nearest
            whole CPU, so a background tick of 0.3 does not cost a thread.
    Returns: max(1, (cores - round(busy)) // ranks). ranks x threads <= cores whenever ranks <= cores; with more
        ranks than cores every process gets 1.
    Raises: ValueError for cores < 1, ranks < 1 or busy < 0.
    """
    if cores < 1 or ranks < 1 or busy < 0:
        raise ValueError(f"choose_threads: need cores >= 1, ranks >= 1, busy >= 0 (got {cores}, {ranks}, {busy})")
    free = cores - int(busy + 0.5)
    return max(1, free // ranks)


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes of this job on this machine: LOCAL_WORLD_SIZE (torchrun, the DeepSpeed launcher, Ray Train), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def busy_cores(own_running: int = 1) -> float:
    """CPUs other work keeps busy: the 1-minute load average minus `own_running` (this job's processes that are
    running and so already counted in it), at least 0. psutil's getloadavg where os has none; 0 when neither does."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        try:
            import psutil

            load = psutil.getloadavg()[0]
        except Exception:  # noqa: BLE001 -- no load figure at all: assume the machine is free
            return 0.0
    return max(0.0, load - own_running)


def resolve(num_threads: int, ranks: int | None = None) -> int:
    """`run.num_threads` → threads per process: num_threads itself when > 0; 0 = automatic: OMP_NUM_THREADS when
    the environment sets it (a choice made outside, e.g. by the launcher or the parent that computed it for its
    ranks), else choose_threads on this machine's free cores and `ranks` (default local_ranks())."""
    if num_threads > 0:
        return num_threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    ranks = local_ranks() if ranks is None else ranks
    # A just-started rank is not in the load average yet, nor are its siblings: count only this process.
    return choose_threads(available_cores(), ranks, busy_cores(own_running=1))


def apply(num_threads: int, ranks: int | None = None) -> int:
    """Set this process's torch intra-op threads (and through it OpenMP's and MKL's) to resolve(num_threads,
    ranks), and the THREAD_ENV variables for child processes. Call it before the first parallel torch op so the
    pool starts at that size. Returns the number of threads set."""
    n = resolve(num_threads, ranks)
    for name in THREAD_ENV:
        os.environ[name] = str(n)
    import torch

    torch.set_num_threads(n)
    log.info("torch threads per process: %d (run.num_threads=%d%s)", n, num_threads,
             ", automatic" if num_threads == 0 else "")
    return n
