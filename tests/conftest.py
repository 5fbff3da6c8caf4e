"""Shared fixtures: offline HF, fixed seeds, tiny configs."""

import os
import secrets
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray token authentication on for every Ray path the tests start (in-process ray.init clusters, `ray start` heads,
# job submissions, launcher subprocesses): they inherit the mode and a per-run random token from this environment,
# so nothing is written to ~/.ray. The mode is forced, not defaulted: the tests assert behaviour with auth on.
os.environ["RAY_AUTH_MODE"] = "token"
if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as `ray get-auth-token --generate` makes
if "ray" in sys.modules:  # imported before this file (by a plugin): Ray caches the mode at import; refresh it
    from ray._raylet import Config

    Config.initialize("")

import pytest  # noqa: E402
import torch  # noqa: E402


# One intra-op thread: the tensors here are tiny, and two processes each spinning 2 OpenMP threads on a 2-core
# machine (a test plus a subprocess it launches) slow tiny forwards down by ~50x.
torch.set_num_threads(1)
# run.num_threads=0 (automatic, gr_train/threads.py) takes an OMP_NUM_THREADS it finds: recipes run in-process keep 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray in this process for the module's tests (2 CPUs, token authentication with the run's token),
    stopped after the module's last test."""
    import pathlib

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}})
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN  # the in-process cluster runs with the run's token
    yield
    ray.shutdown()
