"""A two-node Ray cluster on one machine (ray.cluster_utils.Cluster: a GCS and a raylet per node, as `ray start`
gives, every node with the run's authentication token) and the loss of its second node: the nodes come up and go,
retrieval shard actors spread over both nodes answer every query exactly once when one node dies, and Ray Train's
ZeRO-3 workers on both nodes restart on the node left and end with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import POINTWISE_STRAIGHT_THROUGH, answers_once

from gr_train import checkpoint, synthetic
from gr_train import retrieval as R
from gr_train.config import load_config
from gr_train.models import build_reader

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.distributed]
REPO = Path(__file__).resolve().parents[1]
SECOND = "second_node"  # the custom resource only the second node has


@pytest.fixture(scope="module")
def head():
    """The head node (2 CPUs) of a cluster on this machine, this process its driver; shut down after the module."""
    from ray._raylet import AuthenticationMode, get_authentication_mode
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    assert get_authentication_mode() == AuthenticationMode.TOKEN  # conftest: the run's token
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def second(head):
    """A second node (its own raylet; 2 CPUs and the SECOND resource), removed after the test if still up."""
    node = head.add_node(num_cpus=2, resources={SECOND: 1})
    head.wait_for_nodes()
    yield node
    if node in head.worker_nodes:
        head.remove_node(node)


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)


def test_two_nodes_come_up_and_a_pinned_task_runs_on_the_second(head, second):
    assert alive_nodes() == {head.head_node.node_id, second.node_id}

    @ray.remote(num_cpus=0, resources={SECOND: 0.01})
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    assert ray.get(where.remote(), timeout=60) == second.node_id
    head.remove_node(second)
    wait_until(lambda: alive_nodes() == {head.head_node.node_id}, 60, "the second node reported dead")


def test_shard_actors_on_both_nodes_answer_every_query_once_when_one_node_dies(tmp_path, head, second):
    """Two shard actors placed SPREAD, one per node; the second node removed after 4 of 30 batches: its shard's
    actor restarts on the head (Ray reschedules the placement group's bundle), reloads its slice, and every query
    is answered exactly once, as without the loss."""
    from ray_jobs.retrieve import ShardPool

    words = [f"w{i}" for i in range(400)]
    rng = random.Random(0)
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i in range(3000):
            f.write(f'{{"id": "p{i}", "title": "T{i % 97}", "text": "{" ".join(rng.choices(words, k=12))}"}}\n')
    cfg = load_config(None, [f"retrieval.corpus_path={tmp_path / 'corpus.jsonl'}",
                             f"retrieval.index_dir={tmp_path / 'index'}", "retrieval.n_shards=2",
                             "retrieval.block_size=64", "retrieval.shard_num_cpus=0.5", "retrieval.max_in_flight=3",
                             "retrieval.placement_strategy=SPREAD"])
    R.build_index(cfg)
    queries = [(f"q{i}", " ".join(rng.choices(words, k=3))) for i in range(300)]
    batches = [queries[i : i + 10] for i in range(0, len(queries), 10)]

    pool = ShardPool(cfg.retrieval)
    try:
        before = pool.info()
        assert {i["node_id"] for i in before} == {head.head_node.node_id, second.node_id}
        lost = next(s for s, i in enumerate(before) if i["node_id"] == second.node_id)
        clean = answers_once(pool, batches)
        # the second node's raylet and every process on it killed
        faulty = answers_once(pool, batches, fault_after=4, fault=lambda: head.remove_node(second))
        after = pool.info()
    finally:
        pool.shutdown()
    assert [i["node_id"] for i in after] == [head.head_node.node_id] * 2  # restarted on the node left
    assert after[lost]["pid"] != before[lost]["pid"]
    assert (after[lost]["start"], after[lost]["end"]) == (before[lost]["start"], before[lost]["end"])
    assert sorted(faulty) == sorted(q for q, _ in queries)
    assert faulty == clean
    single = R.ShardedIndex(cfg.retrieval.index_dir).search([q for _, q in queries[:20]], k=5)
    assert [clean[q][0] for q, _ in queries[:20]] == single.ids.tolist()


STEPS, SAVE_EVERY = 24, 4
# (worker pid, rank, node) as each worker starts; (worker pid, step) as a restarted worker resumes
WORKER = re.compile(r"pid=(\d+)\)\S* Ray Train worker: rank (\d) of 2 on node (\w+)")
RESUMED = re.compile(r"pid=(\d+)\)\S* restart of this Ray Train job: resuming from \S*step-(\d+)")


def train_job(head, data: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    """ray_jobs/train.py as a driver of the cluster: 2 ZeRO-3 workers placed SPREAD, one restart allowed."""
    cmd = [sys.executable, "ray_jobs/train.py", "--address", head.address, "--config", "configs/demo.yaml",
           "run.progress=false", f"run.run_dir={run_dir}", f"data.train_path={data / 'train.jsonl'}",
           f"reader.name_or_path={data / 'reader'}", "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
           *POINTWISE_STRAIGHT_THROUGH, "gumbel.k=2", "eval.ks=[2]", "reranker.model_config={model_type: bert, "
           "hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, "
           "max_position_embeddings: 32}", f"train.max_steps={STEPS}", "train.micro_batch_size=4",
           "train.log_every_steps=1", f"train.save_every_steps={SAVE_EVERY}", "optim.lr=1e-3",
           "runtime.num_workers=2", "runtime.placement_strategy=SPREAD", "runtime.max_failures=1"]
    # RAY_DEDUP_LOGS=0: every worker's lines reach the driver's log, also those alike on several workers
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0"}
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 420) -> str:
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"timed out after {timeout_s} s; log {log}:\n" + log.read_text()[-4000:]) from None
    text = log.read_text()
    assert rc == 0, text[-4000:]
    return text


def test_ray_train_loses_a_node_restarts_on_the_other_and_ends_with_the_same_weights(tmp_path, head, second):
    """Ray Train's 2 ZeRO-3 workers, one per node (SPREAD). The second node is removed once the run's first
    checkpoint is written: Ray Train restarts the worker group (runtime.max_failures=1) on the head, the ranks resume
    from that job's last checkpoint, and the run ends with the weights of the same run on both nodes uninterrupted
    (1e-6), every step logged once."""
    from gr_train.reranker import Reranker

    data = tmp_path / "data"
    cfg = load_config(overrides=["synthetic.n_train=48", "synthetic.n_dev=16",
                                 "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}"])
    synthetic.write_demo_data(cfg.synthetic, data, 0)
    torch.manual_seed(0)
    build_reader(cfg.reader, synthetic.build_tokenizer(cfg.synthetic)).save(data / "reader")

    whole = finish(train_job(head, data, tmp_path / "whole", tmp_path / "whole.log"), tmp_path / "whole.log")
    both, left = {head.head_node.node_id, second.node_id}, {head.head_node.node_id}
    placed = {rank: node for _, rank, node in WORKER.findall(whole)}
    assert sorted(placed) == ["0", "1"] and set(placed.values()) == both, whole[-3000:]  # one rank per node

    run_dir = tmp_path / "parted"
    proc = train_job(head, data, run_dir, tmp_path / "parted.log")
    wait_until(lambda: checkpoint.list_checkpoints(run_dir) or proc.poll() is not None, 300, "a first checkpoint")
    head.remove_node(second)
    text = finish(proc, tmp_path / "parted.log")
    resumed = dict(RESUMED.findall(text))  # the restarted workers (log lines arrive in no fixed order)
    workers = WORKER.findall(text)
    assert len(resumed) == 2 and len(workers) == 4, text[-4000:]
    for attempt, nodes in (([w for w in workers if w[0] not in resumed], both),
                           ([w for w in workers if w[0] in resumed], left)):
        assert sorted(rank for _, rank, _ in attempt) == ["0", "1"] and {node for *_, node in attempt} == nodes
    (step,) = {int(s) for s in resumed.values()}
    assert 0 < step < STEPS  # the node was lost mid-run
    rows = [json.loads(line) for line in (run_dir / "tb" / "scalars.jsonl").read_text().splitlines()]
    logged = [row["step"] for row in rows if "train/loss" in row]
    # each step once: what the lost attempt logged after its checkpoint is dropped on resume
    assert len(set(logged)) == len(logged) == STEPS and logged == sorted(logged)
    a = Reranker.load(tmp_path / "whole" / "final" / "reranker").state_dict()
    b = Reranker.load(run_dir / "final" / "reranker").state_dict()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6)


def test_a_restarted_job_resumes_only_from_its_own_checkpoints(tmp_path):
    """ray_jobs.train.resume_after_restart on a 1-rank gloo group: the first attempt follows the command line and
    marks the job started; a restart resumes from a checkpoint, with --no-resume only from one this job wrote (an
    earlier run's checkpoint in the same folder is not resumed from)."""
    import torch.distributed as dist

    from ray_jobs.train import resume_after_restart

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        run_dir = tmp_path / "run"
        (run_dir / "step-000010").mkdir(parents=True)  # an earlier run's
        os.utime(run_dir / "step-000010", (time.time() - 60, time.time() - 60))
        assert resume_after_restart(run_dir, "job-a", resume=False) is False  # first attempt: --no-resume
        assert (run_dir / "ray" / "started-job-a").is_file()
        assert resume_after_restart(run_dir, "job-a", resume=False) is False  # restarted before a checkpoint of its own
        (run_dir / "step-000012").mkdir()  # this job's
        assert resume_after_restart(run_dir, "job-a", resume=False) is True
        assert resume_after_restart(run_dir, "job-b", resume=True) is True  # a new job that resumes
        assert resume_after_restart(run_dir, "job-c", resume=False) is False  # a new job with --no-resume
    finally:
        dist.destroy_process_group()


def test_preprocessing_runs_on_both_nodes(tmp_path, head, second):
    """The Ray Data preprocessing job (the questions' own candidates, 2 workers) on the two-node cluster: every
    record written in input order, and the manifest names both nodes among those that wrote files."""
    from gr_train.config import SyntheticSection
    from gr_train.data import load_any, save_records
    from gr_train.demo import SHIPPED_READER
    from ray_jobs import preprocess

    records = synthetic.generate(SyntheticSection(), 96, seed=4)
    save_records(records, tmp_path / "q.jsonl")
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"reader.name_or_path={SHIPPED_READER}", "preprocess.candidates=input",
        f"preprocess.questions_path={tmp_path / 'q.jsonl'}", f"preprocess.output_dir={tmp_path / 'out'}",
        "preprocess.num_workers=2", "preprocess.worker_num_cpus=1", "preprocess.rows_per_file=12"])
    summary = preprocess.run(cfg, progress=False)
    assert (summary["input"], summary["written"], summary["rejected"]) == (96, 96, 0)
    assert set(summary["files_by_node"]) == {head.head_node.node_id, second.node_id}, summary["files_by_node"]
    assert sum(summary["files_by_node"].values()) == len(summary["files"])
    assert [r.id for r in load_any(tmp_path / "out")] == [r.id for r in records]
