"""The CPU thread policy (gr_train/threads.py): a pure function of cores, ranks and busy cores."""

import os
import subprocess
import sys

import pytest

from gr_train import threads


@pytest.mark.parametrize("cores, ranks, busy, expected", [
    (2, 1, 0.0, 2),   # alone on 2 cores: both
    (2, 1, 1.0, 1),   # one other busy single-threaded process: the free core only
    (2, 1, 0.3, 2),   # background noise below half a core costs nothing
    (2, 1, 0.6, 1),   # ... above half a core it counts as one
    (2, 2, 0.0, 1),   # 2 ranks on 2 cores: one thread each
    (2, 2, 1.0, 1),   # never below 1
    (8, 2, 0.0, 4),
    (8, 3, 0.0, 2),   # 3 x 2 <= 8 (not 3 x 3)
    (8, 2, 3.0, 2),   # 5 free cores over 2 ranks
    (16, 4, 20.0, 1),  # oversubscribed machine
    (1, 4, 0.0, 1),   # more ranks than cores: 1 each
])
def test_choose_threads(cores, ranks, busy, expected):
    assert threads.choose_threads(cores, ranks, busy) == expected


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("busy", [0.0, 0.4, 1.0, 2.5, 7.0])
def test_never_more_threads_than_free_cores(cores, ranks, busy):
    n = threads.choose_threads(cores, ranks, busy)
    assert n >= 1
    if ranks <= cores:
        assert ranks * n <= cores
    if ranks <= cores - int(busy + 0.5):  # room for one thread each: the whole free share is used
        assert ranks * (n + 1) > cores - int(busy + 0.5)


def test_choose_threads_rejects_nonsense():
    with pytest.raises(ValueError, match="cores >= 1"):
        threads.choose_threads(0, 1, 0.0)
    with pytest.raises(ValueError):
        threads.choose_threads(2, 0, 0.0)
    with pytest.raises(ValueError):
        threads.choose_threads(2, 1, -1.0)


def test_explicit_num_threads_wins(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads.resolve(3) == 3


def test_resolve_uses_affinity_load_and_local_world_size(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 0.0, 0.0))  # this process + 2 others
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.resolve(0) == 2  # (6 - 2) // 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert threads.resolve(0) == 4
    assert threads.resolve(0, ranks=3) == 1


def test_an_explicit_omp_num_threads_is_the_automatic_choice(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve(0) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty or not a count: the policy decides
    assert threads.resolve(0) == 8


def test_apply_sets_torch_and_child_environment():
    """In a fresh process: torch's pool size and OMP_NUM_THREADS for children both follow the policy."""
    code = ("import os, torch\nfrom gr_train import threads\nn = threads.apply(2)\n"
            "print(n, torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2", "2", "2"]
