"""2-rank DeepSpeed ZeRO-3 G-Rerank training on CPU (gloo), started by each launcher, with exact resume.

Every run is a subprocess with a timeout and its own --master_port. The runs share tiny models and one data set:
  reference   torchrun --nnodes 2 (two agents on localhost, 1 rank each), 5 steps, checkpoints every 2 steps,
              run through without interruption;
  killed      the same run under torchrun --nproc_per_node 2, SIGKILLed (rank 0) while writing step-000004
              (after step-000002);
  resumed     resumed from step-000002 through the CLI, started by the DeepSpeed launcher from a hostfile
              (deploy/launch_multinode.sh), to the end;
  one rank    resumed from step-000004 onto 1 rank (grad_accum_steps 2 keeps the global batch).
The 2-rank resume reproduces the uninterrupted losses to 1e-6, reranker dropout included (each rank gets its
own RNG stream back).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gr_train import checkpoint, synthetic, train
from gr_train.config import load_config
from gr_train.data import load_records
from gr_train.models import build_reader

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DRIVER = REPO / "tests" / "dist_driver.py"
MODEL = [
    # the reranker kind and k pinned (these tests check a cross-encoder export); the rest is configs/demo.yaml's
    # recipe: a conditional reranker trained with the score-function estimator, unless a test overrides it
    "reranker.kind=cross_encoder", "gumbel.k=2", "gumbel.tau_end=null", "eval.ks=[2, 5]",
    "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
    "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
    "intermediate_size: 64, max_position_embeddings: 32}",
]
STEPS, SAVE_EVERY = 5, 2


def env() -> dict:
    # One OpenMP thread per rank: 2 ranks on 2 cores. DS_ACCELERATOR skips DeepSpeed's accelerator probing.
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["run.progress=false", f"run.run_dir={run_dir}", f"data.train_path={data / 'train.jsonl'}",
            f"data.dev_path={data / 'dev.jsonl'}", f"reader.name_or_path={data / 'reader'}", *MODEL,
            f"train.max_steps={STEPS}", "train.micro_batch_size=4", "train.log_every_steps=1",
            f"train.save_every_steps={SAVE_EVERY}", "optim.lr=1e-3",
            "runtime.engine=deepspeed", *extra]


def launch(cmd: list[str], log: Path, timeout: int = 300, expect_ok: bool = True, **extra_env: str) -> int:
    """Run a launcher in its own process group; on timeout the whole group (launcher and ranks) is killed."""
    return launch_nodes([cmd], [log], timeout, expect_ok, **extra_env)[0]


def launch_nodes(cmds: list[list[str]], logs: list[Path], timeout: int = 300, expect_ok: bool = True,
                 **extra_env: str) -> list[int]:
    """Run one launcher per (simulated) node at once, each in its own process group; wait for all."""
    procs = []
    for cmd, log in zip(cmds, logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env={**env(), **extra_env}, stdout=f,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    rcs = []
    for cmd, log, proc in zip(cmds, logs, procs):
        try:
            rcs.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            raise AssertionError(f"{' '.join(cmd[:6])} ... timed out after {timeout} s; log {log}:\n"
                                 + log.read_text()[-4000:]) from None
        if expect_ok:
            assert rcs[-1] == 0, f"{' '.join(cmd[:6])} ... failed ({rcs[-1]}); log {log}:\n" + log.read_text()[-4000:]
    return rcs


def torchrun(nproc: int, port: int, *args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(port), *args]


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def reports(out: Path, world: int) -> list[dict]:
    return [json.loads((out / f"report-rank{r}.json").read_text()) for r in range(world)]


def scalars(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "tb" / "scalars.jsonl").read_text().splitlines()]


def check_zero3_run(reps: list[dict], run_dir: Path, world: int) -> None:
    """Reader partitioned (each rank holds ~1/world of it), never given a grad, unchanged; every trainable
    reranker parameter changed; logs from rank 0 with per-rank memory and the step time split."""
    for rep in reps:
        assert rep["engine"] == "deepspeed" and rep["world_size"] == world
        share = rep["reader_elements_held"] / rep["reader_elements"]
        assert abs(share - 1 / world) < 0.05, share  # slices are padded to equal size: a little over 1/world
        assert rep["reader_grads"] == 0 and rep["reader_requires_grad"] == 0
        assert rep["reader_changed"] == []
        assert rep["reader_matches_source"] is True  # loaded one gathered submodule at a time
        assert set(rep["reranker_params"]) <= set(rep["reranker_changed"])
    rows = scalars(run_dir)
    tags = set().union(*rows)
    for r in range(world):
        assert f"perf/peak_rss_mb/rank{r}" in tags and f"model/reader_param_elements_held/rank{r}" in tags
    for tag in ("time/passage_encoding", "time/answer_pass", "time/reranker", "time/backward", "time/optimizer",
                "perf/world_size", "train/loss", "train/grad_norm"):
        assert tag in tags, tag
    assert all(math.isfinite(row["train/loss"]) for row in rows if "train/loss" in row)
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 4 * world


def check_logged_run(rows: list[dict], world: int, start: int, end: int) -> None:
    """From rank 0's scalars of one run (start → end): the reader held ~1/world per rank and never moved, the
    trained module did, the losses are finite."""
    model_rows = [row for row in rows if "model/reader_param_abs_sum" in row]  # logged at the start and the end
    assert [row["step"] for row in model_rows] == [start, end]
    first, last = model_rows
    assert first["perf/world_size"] == world
    assert first["model/reader_param_abs_sum"] == last["model/reader_param_abs_sum"]
    assert first["model/trainable_param_abs_sum"] != last["model/trainable_param_abs_sum"]
    for r in range(world):
        held = first[f"model/reader_param_elements_held/rank{r}"] / first["model/reader_param_elements"]
        assert abs(held - 1 / world) < 0.05, held
    step_losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(step_losses) == end - start and all(math.isfinite(v) for v in step_losses)


def free_ports(n: int) -> list[str]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic questions and a tiny demo reader saved as a folder: the runs load it under zero.Init."""
    d = tmp_path_factory.mktemp("data")
    cfg = load_config(overrides=["synthetic.n_train=48", "synthetic.n_dev=16", MODEL[0]])
    synthetic.write_demo_data(cfg.synthetic, d, 0)
    torch.manual_seed(0)
    build_reader(cfg.reader, synthetic.build_tokenizer(cfg.synthetic)).save(d / "reader")
    return d


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run under torchrun, multi-node style (2 nodes x 1 rank)."""
    out = tmp_path_factory.mktemp("reference")
    # A dev evaluation at the last step over 15 questions: rank 0 reads 8, rank 1 reads 7 and one padding question.
    args = [str(DRIVER), "--out", str(out), "--no-resume", "--config", "configs/demo.yaml",
            *overrides(data, out / "run"), f"train.eval_every_steps={STEPS}", "eval.max_questions=15"]
    # Two torchrun agents, one per simulated node (--nnodes 2), as on a cluster; here both on localhost.
    launch_nodes([[str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                   "--master_addr", "127.0.0.1", "--master_port", "29731", *args] for r in (0, 1)],
                 [out / "node0.log", out / "node1.log"], TORCH_EXTENSIONS_DIR=str(out / "torch_extensions"))
    return out


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory) -> Path:
    """The same run, rank 0 SIGKILLed in the middle of writing step-000004."""
    out = tmp_path_factory.mktemp("killed")
    rc = launch(torchrun(2, 29732, str(DRIVER), "--out", str(out), "--no-resume", "--kill-in-save", "step-000004",
                         "--config", "configs/demo.yaml", *overrides(data, out / "run")), out / "log.txt",
                expect_ok=False)
    assert rc != 0
    return out


def test_torchrun_zero3_partitions_the_reader_and_trains_the_reranker(reference):
    run_dir = reference / "run"
    check_zero3_run(reports(reference, 2), run_dir, 2)
    assert sorted(losses(reference)) == list(range(STEPS))
    # The consolidated export is a plain HF folder (no ZeRO shards) that transformers loads by itself.
    from transformers import AutoModelForSequenceClassification

    exported = run_dir / "final" / "reranker"
    assert not list(run_dir.rglob("*zero_pp_rank*")) and not list(run_dir.rglob("*optim_states*"))
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    saved = checkpoint.load_file(run_dir / "final" / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[f"model.{name}"]), name


def test_cpu_ranks_train_without_compiling_deepspeeds_shm_allreduce_op(reference):
    """runtime.shm_allreduce_op=false (the default): the ranks, started with an empty extensions folder, trained
    (the test above) without compiling DeepSpeed's shared-memory op, which only its inference all-reduce uses."""
    logs = (reference / "node0.log").read_text() + (reference / "node1.log").read_text()
    assert "deepspeed_shm_comm" not in logs and "built successfully" not in logs
    assert not list((reference / "torch_extensions").glob("**/deepspeed_shm_comm*"))
    assert sorted(losses(reference)) == list(range(STEPS))


def test_the_dev_evaluation_split_across_ranks_equals_one_process(reference, data):
    """Each rank scores and reads its share of the dev questions; the gathered metrics and label-free loss are
    those of one process evaluating the final reranker on all of them."""
    from gr_train.evaluate import hard_topk_loss, ranking_metrics, score_records
    from gr_train.models import build_models
    from gr_train.reranker import Reranker

    row = next(r for r in scalars(reference / "run") if "eval/dev_loss_hard" in r)
    assert row["step"] == STEPS
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides(data, reference / "run" / "check"))
    records = load_records(data / "dev.jsonl")[:15]
    reader, _ = build_models(cfg)
    reranker = Reranker.load(reference / "run" / "final" / "reranker")
    scores = score_records(reranker, records, cfg.data.n_candidates)
    assert row["eval/dev_loss_hard"] == pytest.approx(hard_topk_loss(scores, reader, records, cfg), abs=1e-5)
    ranking = ranking_metrics(records, scores, cfg.eval.ks)
    assert row["eval/recall@5"] == pytest.approx(ranking["all"]["recall@5"], abs=1e-9)
    assert row["eval/recall@2_indirect"] == pytest.approx(ranking["indirect"]["recall@2"], abs=1e-9)


def test_rank_share_covers_every_record_once_with_equal_lengths():
    from gr_train.train import rank_share

    records = list("abcde")
    shares = [rank_share(records, r, 2) for r in range(2)]
    assert shares == [(["a", "b", "c"], 3), (["d", "e", "a"], 2)]
    assert [x for share, real in shares for x in share[:real]] == records
    assert [rank_share(["a"], r, 3) for r in range(3)] == [(["a"], 1), (["a"], 0), (["a"], 0)]


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(reference, killed, data):
    # Until it was killed, the single-node run (torchrun --nproc_per_node 2) computed what the 2-node one did.
    ref, got = losses(reference), losses(killed)
    assert sorted(got) == list(range(4))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-6), step
    run_dir = killed / "run"
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-000002"]
    assert list(run_dir.glob(".step-000004.tmp-*")), "the save was not interrupted midway"
    # The surviving checkpoint is world-size independent: it loads into the single-process engine too.
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides(data, run_dir, "runtime.engine=local"))
    recipe = train.setup(cfg, resume=True)
    assert recipe.start_step == 2
    saved = checkpoint.load_file(run_dir / "step-000002" / "model.safetensors")
    for name, value in recipe.reranker.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_resume_after_sigkill_reproduces_the_uninterrupted_run_then_continues_on_one_rank(
        reference, killed, data, tmp_path):
    ref = losses(reference)
    run_dir = killed / "run"
    # 2 ranks again, through the CLI, started by the DeepSpeed launcher from a hostfile (deploy/launch_multinode.sh).
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    launch(["bash", "deploy/launch_multinode.sh", "configs/demo.yaml", *overrides(data, run_dir)],
           tmp_path / "resume.log", HOSTFILE=str(hostfile), MASTER_PORT="29733", DEEPSPEED=str(BIN / "deepspeed"),
           NO_SSH="1", NODE_RANK="0")  # no sshd here: the per-node mode, as on clusters without ssh between nodes
    # the resume drops what the killed run logged after its step-2 checkpoint, so every row after step 2 (and the
    # model scalars the resumed run logs at its start, step 2) is the resumed run's, each step once
    rows = [row for row in scalars(run_dir) if row["step"] > 2 or (row["step"] == 2 and "perf/world_size" in row)]
    got = {row["step"] - 1: row["train/loss"] for row in rows if "train/loss" in row}  # logged at step + 1
    assert sorted(got) == list(range(2, STEPS))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-6), step
    check_logged_run(rows, 2, 2, STEPS)
    assert (run_dir / "final" / "reranker" / "model.safetensors").is_file()

    # Once more, onto 1 rank from step-000004: same global batch (4 questions x 1 rank x 2 micro-batches), so the
    # same questions and Gumbel noise and exactly the saved weights; the reranker's dropout masks differ (one
    # rank's RNG stream now serves both halves), so the loss agrees only up to dropout noise.
    one = tmp_path / "one_rank"
    launch(torchrun(1, 29734, str(DRIVER), "--out", str(one), "--config", "configs/demo.yaml",
                    *overrides(data, run_dir, "train.grad_accum_steps=2")), tmp_path / "one_rank.log")
    got, rep = losses(one), reports(one, 1)[0]
    assert sorted(got) == [4] and rep["start_step"] == 4 and rep["world_size"] == 1
    assert rep["reranker_matches_checkpoint"] is True
    assert got[4] == pytest.approx(ref[4], abs=1e-2)


def test_zero3_fine_tunes_a_partitioned_hf_reader_without_a_reranker(data, tmp_path):
    """Reader fine-tuning (objective.name=reader) of a decoder-only reader in the parallel format on 2 ranks: the
    reader is partitioned and trained (its top layer only: reader.train_layers=1), no reranker is built, and
    final/reader is a plain HF folder holding exactly the trained weights, which the reranker recipes load frozen."""
    from gr_train.reader import byte_level_tokenizer
    from gr_train.reader_tuning import save_reader

    causal = ["reader.kind=causal_lm", "reader.passage_max_tokens=24", "reader.answer_max_tokens=8"]
    torch.manual_seed(0)
    source = save_reader(build_reader(load_config(None, [*causal, "reader.model_config={model_type: llama}"]).reader,
                                      byte_level_tokenizer()), tmp_path / "source")
    run_dir, out = tmp_path / "run", tmp_path / "out"
    tuning = ["run.progress=false", f"run.run_dir={run_dir}", f"data.train_path={data / 'train.jsonl'}", *causal,
              f"reader.name_or_path={source}", "reader.trainable=true", "reader.train_layers=1",
              "objective.name=reader", "data.n_candidates=4", "train.max_steps=4", "train.micro_batch_size=4",
              "train.log_every_steps=1", "optim.lr=3e-3", "runtime.engine=deepspeed"]
    launch(torchrun(2, 29735, str(DRIVER), "--out", str(out), "--no-resume", "--config", "configs/demo.yaml",
                    *tuning), tmp_path / "log.txt")
    for rep in reports(out, 2):
        assert rep["engine"] == "deepspeed" and rep["world_size"] == 2 and rep["reranker_params"] == []
        assert abs(rep["reader_elements_held"] / rep["reader_elements"] - 0.5) < 0.05  # partitioned
        changed = rep["reader_changed"]
        assert changed and all(k.startswith(("model.model.layers.1.", "model.model.norm.")) for k in changed), changed
        assert rep["reader_requires_grad"] > 0
    got = losses(out)
    assert sorted(got) == list(range(4)) and all(math.isfinite(v) for v in got.values())
    saved = checkpoint.load_file(run_dir / "final" / "model.safetensors")  # the gathered trained reader
    reloaded = build_reader(load_config(None, [*causal, f"reader.name_or_path={run_dir / 'final' / 'reader'}"]).reader)
    assert not any(p.requires_grad for p in reloaded.parameters())
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, saved[name]), name
    # The same recipe in one process (same global batch of 8 questions) computes the same losses and weights.
    local_losses = {}
    local = train.main(load_config(REPO / "configs" / "demo.yaml", [
        *tuning, "runtime.engine=local", "train.grad_accum_steps=2", f"run.run_dir={tmp_path / 'local'}"]),
        resume=False, on_step=lambda step, sc: local_losses.update({step: sc["train/loss"]}))
    for step, loss in got.items():
        assert loss == pytest.approx(local_losses[step], abs=1e-5), step
    trained = local["recipe"].reader.state_dict()
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=1e-5)


@pytest.mark.ray
def test_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(data, tmp_path):
    """Rank 1 alone gets a NaN loss in step 1: both ranks skip that optimizer step (no weight moves, DeepSpeed counts
    one skipped step on each), the run goes on, and train/nonfinite_steps counts it."""
    out, run_dir = tmp_path / "out", tmp_path / "run"
    launch(torchrun(2, int(free_ports(1)[0]), str(DRIVER), "--out", str(out), "--no-resume", "--nan-at", "1:1",
                    "--config", "configs/demo.yaml", *overrides(data, run_dir, "train.save_every_steps=0")),
           tmp_path / "nan.log")
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    sums = [r["reranker_abs_sum"] for r in rows]
    assert len(rows) == STEPS and math.isnan(rows[1]["loss"]) and all(math.isfinite(r["loss"]) for r in rows[2:])
    assert sums[1] == sums[0] and len({sums[0], sums[2], sums[3], sums[4]}) == 4  # step 1 alone made no update
    assert [rep["skipped_steps"] for rep in reports(out, 2)] == [1, 1]
    logged = [(row["step"], row["train/nonfinite_steps"]) for row in scalars(run_dir) if "train/nonfinite_steps" in row]
    assert logged == [(1, 0), (2, 1), (3, 1), (4, 1), (5, 1)]


def test_deepspeed_launcher_without_ssh_runs_two_simulated_nodes(data, tmp_path):
    """deploy/launch_multinode.sh with NO_SSH=1 once per node of a 2-host hostfile (two names of this machine, one
    slot each), as on a cluster without ssh between nodes: node 0 runs rank 0, node 1 rank 1, the two form one
    ZeRO-3 job (the reader partitioned across them) and train to the end."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    run_dir = tmp_path / "run"
    cmds = [["env", f"NODE_RANK={node}", "bash", "deploy/launch_multinode.sh", "configs/demo.yaml",
             *overrides(data, run_dir, "train.max_steps=2", "train.save_every_steps=0")] for node in (0, 1)]
    launch_nodes(cmds, [tmp_path / "node0.log", tmp_path / "node1.log"], HOSTFILE=str(hostfile),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=free_ports(1)[0], DEEPSPEED=str(BIN / "deepspeed"), NO_SSH="1")
    check_logged_run(scalars(run_dir), 2, 0, 2)
    assert (run_dir / "final" / "reranker" / "model.safetensors").is_file()


def test_ray_train_runs_zero3_on_two_workers(data, tmp_path):
    """ray_jobs/train.py on a local Ray: TorchTrainer, 2 workers from runtime.num_workers, gloo."""
    import tempfile

    run_dir = tmp_path / "run"
    ray_tmp = tempfile.mkdtemp(prefix="grt", dir="/tmp")  # short AF_UNIX paths (docs/design.md#ray-local-head)
    launch([sys.executable, "ray_jobs/train.py", "--config", "configs/demo.yaml",
            *overrides(data, run_dir, "train.max_steps=2", "train.save_every_steps=0", "runtime.num_workers=2")],
           tmp_path / "ray.log", timeout=300, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token",  # token: conftest
           RAY_USAGE_STATS_ENABLED="0")
    check_logged_run(scalars(run_dir), 2, 0, 2)
    assert (run_dir / "final" / "reranker" / "model.safetensors").is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_the_training_job(data, tmp_path):
    """`ray job submit ... ray_jobs/train.py` on a separate head (docs/design.md#ray-local-head: --block so SIGTERM
    to its PID stops exactly it, free ports, short temp dir, token authentication with the run's token)."""
    import tempfile
    import time

    temp = tempfile.mkdtemp(prefix="grh", dir="/tmp")
    # PATH: the job's `python` must be the venv's (the head runs entrypoints through the shell).
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": temp,
               "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    gcs, dash, agent, client, rt_env, metrics, agent_grpc = free_ports(7)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", gcs, "--dashboard-host",
         "127.0.0.1", "--dashboard-port", dash, "--dashboard-agent-listen-port", agent, "--ray-client-server-port",
         client, "--runtime-env-agent-port", rt_env, "--metrics-export-port", metrics, "--dashboard-agent-grpc-port",
         agent_grpc, "--temp-dir", temp, "--disable-usage-stats"],
        env={**env(), **ray_env}, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".", "--",
           "python", "ray_jobs/train.py", "--config", "configs/demo.yaml",
           *overrides(data, run_dir, "train.max_steps=2", "train.save_every_steps=0")]
    try:
        deadline = time.time() + 180
        # The job agent follows the head by seconds (docs/design.md#ray-local-head); under load the dashboard can
        # also drop the first connections.
        while True:
            rc = launch(cmd, tmp_path / "submit.log", timeout=300, expect_ok=False, **ray_env)
            text = (tmp_path / "submit.log").read_text()
            if rc == 0 or time.time() > deadline or not any(
                    s in text for s in ("No available agent", "Failed to connect", "Connection refused",
                                        "Connection aborted")):
                break
            time.sleep(2)
        assert rc == 0, text[-4000:]
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
    check_logged_run(scalars(run_dir), 2, 0, 2)


def kill_resume_and_compare(data: Path, tmp_path: Path, extra: tuple[str, ...]):
    """A 4-step run of the demo config with `extra` on 2 ZeRO-3 ranks, uninterrupted; the same run SIGKILLed after
    its step-2 checkpoint and resumed: the resumed steps' losses equal the uninterrupted ones to 1e-6 and both end
    with the same reranker weights (1e-6). Returns the two final rerankers."""
    from gr_train.reranker import Reranker

    ports = free_ports(2)
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    launch(torchrun(2, int(ports[0]), str(DRIVER), "--out", str(whole), "--no-resume", "--config",
                    "configs/demo.yaml", *overrides(data, whole / "run", *extra, "train.max_steps=4")),
           tmp_path / "whole.log")
    ref = losses(whole)
    assert sorted(ref) == [0, 1, 2, 3] and all(math.isfinite(v) for v in ref.values())
    rc = launch(torchrun(2, int(ports[1]), str(DRIVER), "--out", str(parted), "--no-resume", "--kill-after-step",
                         "2", "--config", "configs/demo.yaml", *overrides(data, parted / "run", *extra,
                                                                          "train.max_steps=4")),
                tmp_path / "killed.log", expect_ok=False)
    assert rc != 0 and [p.name for p in checkpoint.list_checkpoints(parted / "run")] == ["step-000002"]
    launch(torchrun(2, int(ports[1]), str(DRIVER), "--out", str(parted / "again"), "--config", "configs/demo.yaml",
                    *overrides(data, parted / "run", *extra, "train.max_steps=4")), tmp_path / "resumed.log")
    got = losses(parted / "again")
    assert sorted(got) == [2, 3]
    for step in got:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    a = Reranker.load(whole / "run" / "final" / "reranker")
    b = Reranker.load(parted / "run" / "final" / "reranker")
    for key, value in a.state_dict().items():
        assert torch.allclose(b.state_dict()[key], value, atol=1e-6), key
    return a, b


def test_conditional_selection_trains_under_zero3_on_two_ranks_and_resumes_exactly(data, tmp_path):
    """A conditional bi-encoder (reranker.conditional) trained by the score-function estimator with the KL penalty
    to its start (gumbel.kl_coef: each rank holds a frozen copy of the initial reranker) on 2 ZeRO-3 ranks:
    SIGKILLed after its step-2 checkpoint and resumed, it logs the uninterrupted run's losses (the KL term
    included: the resumed run's reference is the same initial reranker) and ends with its final weights."""
    a, b = kill_resume_and_compare(data, tmp_path, ("reranker.kind=bi_encoder", "reranker.conditional=true",
                                                    "gumbel.estimator=score_function", "gumbel.samples=2",
                                                    "gumbel.kappa=1.0", "gumbel.kl_coef=0.5"))
    assert a.cfg.conditional and b.cfg.conditional


def test_conditional_sampled_prefixes_seen_before_keep_the_ranks_in_step(data, tmp_path):
    """kappa 3 makes the untrained policy peaked: a later sample often draws prefixes an earlier one drew, so a rank
    finds them already scored (reranker._prefix_memo) where the other rank does not. Under ZeRO-3 each encoder
    forward all-gathers the parameters (and its backward again): a rank that skipped the encoding left the other
    waiting in a collective (gloo: connection reset; this run failed so before the fix). The run finishes,
    resumes exactly and ends with the uninterrupted weights."""
    a, b = kill_resume_and_compare(data, tmp_path, ("reranker.kind=bi_encoder", "reranker.conditional=true",
                                                    "gumbel.estimator=score_function", "gumbel.samples=4",
                                                    "gumbel.kappa=3.0", "gumbel.k=5"))
    assert a.cfg.conditional and b.cfg.conditional


def test_a_causal_lm_reranker_trains_under_zero3_on_two_ranks_and_resumes_exactly(data, tmp_path):
    """An LLM reranker (reranker.kind=causal_lm, yes/no log-odds, a tiny Llama trained whole: LoRA runs on the local
    engine) on 2 ZeRO-3 ranks: SIGKILLed after its step-2 checkpoint and resumed, it logs the uninterrupted run's
    losses and ends with its final weights."""
    from gr_train.data import load_records
    from gr_train.reranker import build_word_tokenizer

    records = load_records(data / "train.jsonl") + load_records(data / "dev.jsonl")
    texts = [r.question for r in records] + [c.text for r in records for c in r.ctxs] + ["yes no"]
    build_word_tokenizer(texts).save_pretrained(tmp_path / "tokenizer")
    a, b = kill_resume_and_compare(data, tmp_path, (
        "reranker.kind=causal_lm", f"reranker.tokenizer_path={tmp_path / 'tokenizer'}", "reranker.max_tokens=160",
        "reranker.model_config={num_hidden_layers: 1}"))
    assert a.kind == b.kind == "causal_lm"
