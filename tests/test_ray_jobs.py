"""Ray: shard actors survive a kill mid-run with every query answered exactly once; preprocess → Parquet → train
through a real `ray job submit` to a local head; that head, like every Ray instance here, runs with token
authentication (conftest) and refuses an unauthenticated submit."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from gr_train import checks
from gr_train import retrieval as R
from gr_train.config import load_config
from helpers import answers_once

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]

WORDS = [f"w{i}" for i in range(400)]


def write_corpus(path, n, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choices(WORDS, k=12))
            f.write(json.dumps({"id": f"p{i}", "title": f"T{i % 97}", "text": text}) + "\n")


def test_killed_shard_actor_restarts_and_every_query_is_answered_once(tmp_path, ray_local):
    from ray_jobs.retrieve import ShardPool

    write_corpus(tmp_path / "corpus.jsonl", 3000)
    cfg = load_config(None, [f"retrieval.corpus_path={tmp_path / 'corpus.jsonl'}",
                             f"retrieval.index_dir={tmp_path / 'index'}", "retrieval.n_shards=2",
                             "retrieval.block_size=64", "retrieval.shard_num_cpus=0.5", "retrieval.max_in_flight=3"])
    R.build_index(cfg)
    rng = random.Random(3)
    queries = [(f"q{i}", " ".join(rng.choices(WORDS, k=3))) for i in range(300)]
    batches = [queries[i : i + 10] for i in range(0, len(queries), 10)]

    pool = ShardPool(cfg.retrieval)
    before = pool.info()
    clean = answers_once(pool, batches)
    # SIGKILL-like: the actor process dies mid-stream
    faulty = answers_once(pool, batches, fault_after=4, fault=lambda: ray.kill(pool.actors[0], no_restart=False))
    after = pool.info()
    pool.shutdown()
    assert after[0]["pid"] != before[0]["pid"], "the killed actor was not restarted in a new process"
    assert after[1]["pid"] == before[1]["pid"]
    assert (after[0]["start"], after[0]["end"]) == (before[0]["start"], before[0]["end"])  # reloaded its shard
    assert sorted(faulty) == sorted(q for q, _ in queries)  # every query id exactly once
    assert faulty == clean
    # And the actors' merged answers are the in-process single index's.
    single = R.ShardedIndex(cfg.retrieval.index_dir).search([q for _, q in queries[:20]], k=5)
    assert [clean[q][0] for q, _ in queries[:20]] == single.ids.tolist()


RELOAD_S = 12.0  # longer than the old fixed resend window (3 resends, 0.5 + 1 + 1.5 s sleeps: gave up after 9.6 s)


def slow_reload_shard():
    """A shard actor class whose reload after a restart takes RELOAD_S (a large shard); the first load is fast."""
    from ray_jobs.retrieve import ShardServer

    class SlowReloadShard(ShardServer):
        def _load(self, folder):
            if ray.get_runtime_context().was_current_actor_reconstructed:
                time.sleep(RELOAD_S)
            return super()._load(folder)

    return ray.remote(SlowReloadShard)


def test_a_shard_that_reloads_slower_than_a_fixed_window_is_waited_for(tmp_path, ray_local):
    """A shard whose reload takes 12 s is killed mid-stream with Ray's own retries off (max_task_retries=0: the
    pool's resend is all there is): every query is answered exactly once, as without the kill, because the resend
    budget comes from retrieval.shard_reload_s; with a budget shorter than the reload the error names the key."""
    from ray_jobs.retrieve import ACTOR_START_S, RELOAD_FACTOR, ShardPool, reload_budget_s

    write_corpus(tmp_path / "corpus.jsonl", 600)
    cfg = load_config(None, [f"retrieval.corpus_path={tmp_path / 'corpus.jsonl'}",
                             f"retrieval.index_dir={tmp_path / 'index'}", "retrieval.n_shards=2",
                             "retrieval.block_size=64", "retrieval.shard_num_cpus=0.5", "retrieval.max_in_flight=2",
                             "retrieval.max_task_retries=0", f"retrieval.shard_reload_s={RELOAD_S + 10}"])
    R.build_index(cfg)
    rng = random.Random(5)
    queries = [(f"q{i}", " ".join(rng.choices(WORDS, k=3))) for i in range(60)]
    batches = [queries[i : i + 10] for i in range(0, len(queries), 10)]
    expected = R.ShardedIndex(cfg.retrieval.index_dir).search([q for _, q in queries], k=5).ids.tolist()

    def run(pool, kill_after):
        out = {}
        stream = pool.stream(((b, [q for _, q in batch]) for b, batch in enumerate(batches)), k=5)
        for done, (b, hits) in enumerate(stream, start=1):
            for row, (qid, _) in enumerate(batches[b]):
                assert qid not in out, f"{qid} answered twice"
                out[qid] = hits.ids[row].tolist()
            if done == kill_after:
                ray.kill(pool.actors[0], no_restart=False)
        return out

    pool = ShardPool(cfg.retrieval, actor_class=slow_reload_shard())
    try:
        assert all(0 < t < 5 for t in pool.load_s)  # measured first loads (fast)
        assert pool.retry_budget_s == [RELOAD_S + 10] * 2  # the configured reload time is the longer one
        t0 = time.monotonic()
        got = run(pool, kill_after=2)
        assert time.monotonic() - t0 > RELOAD_S  # the reload really was waited for
    finally:
        pool.shutdown()
    assert sorted(got) == sorted(q for q, _ in queries)  # every query exactly once
    assert [got[q] for q, _ in queries] == expected

    # Unconfigured, the budget derives from the measured load; a budget below the reload fails, naming the key.
    assert reload_budget_s(0.0, 3.0) == RELOAD_FACTOR * 3.0 + ACTOR_START_S
    cfg.retrieval.shard_reload_s = 0.0
    pool = ShardPool(cfg.retrieval, actor_class=slow_reload_shard())
    try:
        pool.retry_budget_s = [2.0, 2.0]  # as if the shard had loaded in no time and ACTOR_START_S were 2 s
        with pytest.raises(TimeoutError, match=r"shard 0: no answer within its reload budget of 2\.0 s.*"
                                               r"retrieval\.shard_reload_s"):
            run(pool, kill_after=1)
    finally:
        pool.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# ray job submit → build_index, preprocess → Parquet → train.main
# ---------------------------------------------------------------------------------------------------------------

TINY = ["reranker.kind=cross_encoder", "gumbel.k=2", "gumbel.tau_end=null", "eval.ks=[2, 5]",
        "reader.name_or_path=null", "reader.random_init=true",  # a tiny random reader, on purpose
        "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 32}"]


def write_questions(data, n=30):
    """Synthetic two-hop questions; their passages (titled uniquely) form the corpus. Adds 3 bad records."""
    from gr_train import synthetic

    records = synthetic.generate(load_config(REPO / "configs" / "demo.yaml").synthetic, n, seed=0)
    corpus, lines = [], []
    for r in records:
        ctxs = []
        for j, p in enumerate(r.ctxs):
            title = f"{r.id}-{j}"
            corpus.append({"id": title, "title": title, "text": p.text})
            ctxs.append({"title": title, "text": p.text, "is_gold": p.is_gold})
        lines.append(json.dumps({"id": r.id, "question": r.question, "answers": r.answers, "ctxs": ctxs}))
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"id": "no-answers", "question": "who?"}))
    lines.append(lines[0])  # duplicate id q0
    (data / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (data / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return records


def free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return [str(p) for p in ports]


def start_head(tmp):
    """A separate local head (docs/design.md#ray-local-head): --block in its own session, so it and all it starts can
    be stopped by its process group id; free ports; short temp dir; token authentication with the run's token
    (conftest), dashboard on 127.0.0.1. Returns (process, address, CLI env)."""
    import tempfile

    bin_dir = Path(sys.executable).parent
    temp = tempfile.mkdtemp(prefix="grj", dir="/tmp")
    # No graceful drain on SIGTERM: Ray 2.60 otherwise waits its full 30 s drain window even when idle.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": temp,
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    gcs, dash, agent, client, rt_env, metrics, agent_grpc = free_ports(7)
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", "4", "--port", gcs,
         "--dashboard-host", "127.0.0.1", "--dashboard-port", dash, "--dashboard-agent-listen-port", agent,
         "--ray-client-server-port", client, "--runtime-env-agent-port", rt_env, "--metrics-export-port", metrics,
         "--dashboard-agent-grpc-port", agent_grpc, "--temp-dir", temp, "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head.temp_dir = temp
    return head, f"http://127.0.0.1:{dash}", env


def stop_head(head):
    """SIGTERM to the `ray start --block` process, which stops the raylet, GCS, dashboard and workers it started;
    never `ray stop` (it kills this process's ray.init too, docs/design.md#ray-local-head). If it hangs, SIGKILL its
    process group (the head was started in a new session, so the group is exactly its processes)."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
    shutil.rmtree(head.temp_dir, ignore_errors=True)  # session logs and sockets


def submit(address, env, args, timeout=240):
    """`ray job submit --address A --working-dir . -- python -m ...`, retried while the job agent is not up."""
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
           "--runtime-env", "deploy/runtime_env.yaml", "--", "python", "-m", *args]
    deadline = time.time() + 60
    while True:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        not_ready = "No available agent" in out or "Failed to connect" in out or "Connection refused" in out
        if proc.returncode == 0 or not not_ready or time.time() > deadline:
            return proc.returncode, out
        time.sleep(2)


def http(address, method, path, token=None, body=None):
    """(status, parsed JSON or None) of one request to the dashboard; 5 s bound; status 0 while it is not up."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(address + path, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def test_unauthenticated_job_submit_is_refused(tmp_path):
    """A head started as the tests start every Ray (token auth, dashboard on 127.0.0.1): `ray job submit` without
    the token, or with a wrong one, is refused and runs nothing; so is a raw POST to the job API; the same submit
    with the token is accepted (the refusal is the authentication, not a broken head). Bounded: ~20 s."""
    head, address, env = start_head(tmp_path)
    assert address.startswith("http://127.0.0.1:")
    token = env["RAY_AUTH_TOKEN"]
    marker = tmp_path / "ran"
    entry = ["--", "python", "-c", f"open({str(marker)!r}, 'w')"]
    ray_cli = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--no-wait"]
    home = tmp_path / "home"  # an empty home: no ~/.ray/auth_token to fall back on
    home.mkdir()
    outsider = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    try:
        deadline = time.time() + 90
        while http(address, "GET", "/api/version", token)[0] != 200:
            assert time.time() < deadline and head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        assert http(address, "GET", "/api/version")[0] == 401  # no token: unauthenticated
        assert http(address, "GET", "/api/version", "0" * 64)[0] == 403  # wrong token: forbidden
        assert http(address, "POST", "/api/jobs/", None, {"entrypoint": "python -c pass"})[0] == 401
        assert http(address, "POST", "/api/jobs/", "0" * 64, {"entrypoint": "python -c pass"})[0] == 403

        for name, extra in (("no token", {}), ("no token, mode disabled", {"RAY_AUTH_MODE": "disabled"}),
                            ("wrong token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})):
            proc = subprocess.run([*ray_cli, *entry], env={**outsider, **extra}, capture_output=True, text=True,
                                  timeout=60)
            out = proc.stdout + proc.stderr
            assert proc.returncode != 0, f"{name}: an unauthenticated submit was accepted\n{out[-2000:]}"
            assert "token" in out.lower(), f"{name}: refused for another reason\n{out[-2000:]}"
        status, jobs = http(address, "GET", "/api/jobs/", token)
        assert status == 200 and jobs == []  # nothing was submitted

        proc = subprocess.run([*ray_cli, *entry], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
        assert len(http(address, "GET", "/api/jobs/", token)[1]) == 1
    finally:
        stop_head(head)


# A job module run directly, outside `ray job submit`, with nothing configured: no RAY_AUTH_MODE, no token, no head
# on this machine (its own Ray temp dir), an empty home. Ray is imported first, as the job modules do.
START_A_JOB = """
import ray
from ray_jobs import start_job
start_job("build_index", "", ["--config", "configs/demo.yaml"])
from ray._raylet import AuthenticationMode, get_authentication_mode
import os
print(get_authentication_mode() == AuthenticationMode.TOKEN, len(os.environ.get("RAY_AUTH_TOKEN", "")))
ray.shutdown()
"""


def test_a_job_run_directly_starts_its_local_ray_with_token_authentication(tmp_path):
    """`python -m ray_jobs.<job>` outside `ray job submit` starts a local Ray (plain ray.init()); it listens with
    token authentication and a token of its own (256 bits, in the environment only). Ray 2.60 alone would also pick
    token mode, but by writing a generated token to ~/.ray/auth_token (mode 644) that every later Ray of the user
    then shares; gr-train sets the mode itself rather than depend on a Ray default."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env |= {"HOME": str(home), "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", START_A_JOB], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=180)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["True", "64"]
    assert not (home / ".ray").exists()


def test_ray_job_submit_preprocess_then_train(tmp_path, ray_local):
    from gr_train import train
    from gr_train.data import load_any

    data = tmp_path / "data"
    data.mkdir()
    records = write_questions(data)
    overrides = [*TINY, f"retrieval.corpus_path={data / 'corpus.jsonl'}", f"retrieval.index_dir={data / 'index'}",
                 "retrieval.block_size=64", "retrieval.shard_num_cpus=0.5", "retrieval.top_k=10",
                 f"preprocess.questions_path={data / 'questions.jsonl'}", f"preprocess.output_dir={data / 'out'}",
                 "preprocess.num_workers=1", "preprocess.worker_num_cpus=0.5", "preprocess.batch_size=16"]
    # The index is built on the module's local Ray instance (same entrypoint, minus ~25 s of a second job).
    from ray_jobs import build_index

    built = build_index.main(["--config", str(REPO / "configs" / "demo.yaml"), *overrides])
    assert built["passages"] == 300 and built["shards"] == [192, 108]
    head, address, env = start_head(tmp_path)
    try:
        rc, out = submit(address, env, ["ray_jobs.preprocess", "--config", "configs/demo.yaml", *overrides])
        assert rc == 0 and "preprocess summary" in out, out[-3000:]
    finally:
        stop_head(head)

    out_dir = data / "out"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    index = json.loads((data / "index" / "index.json").read_text())
    assert (manifest["input"], manifest["written"], manifest["rejected"]) == (33, 30, 3)
    assert manifest["index_version"] == index["index_version"] and len(manifest["config_hash"]) == 16
    assert manifest["rejects_by_reason"] == {"invalid JSON": 1, "field 'answers': missing": 1, "duplicate id": 1}
    rejects = [json.loads(line) for line in (out_dir / "rejects.jsonl").read_text().splitlines()]
    assert [(r["where"], r["id"]) for r in rejects] == [("line 4", ""), ("line 6", "no-answers"), ("line 33", "q0")]

    import pyarrow.parquet as pq

    table = pq.read_table(sorted(out_dir.glob("*.parquet")))
    assert set(table["index_version"].to_pylist()) == {index["index_version"]}
    assert set(table["schema_version"].to_pylist()) == {2}
    assert {"reranker_input_ids", "reader_passage_ids"} <= set(table.column_names)
    loaded = {r.id: r for r in load_any(out_dir)}
    assert sorted(loaded) == sorted(r.id for r in records)
    # The retrieved candidates carry the input's gold labels (by paragraph) and computed has_answer.
    q0 = loaded["q0"]
    assert len(q0.ctxs) == 10 and any(p.is_gold for p in q0.ctxs)
    assert all(p.has_answer == (q0.answers[0] in p.text.split()) for p in q0.ctxs)
    # Sharded by rank: two ranks read disjoint halves that together are the whole set.
    from gr_train.data import iter_parquet_records

    ranks = [[r.id for r in iter_parquet_records(out_dir, rank, 2)] for rank in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(loaded)

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        *TINY, f"run.run_dir={tmp_path / 'run'}", "run.progress=false", f"data.train_path={out_dir}",
        "train.max_steps=2", "train.micro_batch_size=4", "train.log_every_steps=1"])
    result = train.main(cfg, resume=False)
    assert Path(result["final"], "config.yaml").is_file()
    assert np.isfinite(result["last"]["train/loss"])

    # The evaluate job on the same Parquet (labels carried over), on the module's local Ray instance.
    from ray_jobs import evaluate

    summary = evaluate.main(["--config", str(REPO / "configs" / "demo.yaml"), *TINY,
                             f"data.dev_path={out_dir}", f"run.run_dir={tmp_path / 'run'}", "eval.ray_tasks=2",
                             "eval.task_num_cpus=0.5", "--no-reader"])
    assert summary["questions"] == 30 and 0.0 <= summary["ranking"]["all"]["recall@5"] <= 1.0


def test_question_files_of_every_format_parse_record_by_record(tmp_path):
    """FiD JSON list, HotpotQA and Parquet questions; a bad record becomes a reject with its reason, not an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_jobs.preprocess import parse_row, read_question_items

    fid = tmp_path / "q.json"
    fid.write_text(json.dumps([{"id": 1, "question": "who?", "answers": ["Ann"]},
                               {"id": 2, "question": "", "answers": ["Bob"]}]))
    rows = [parse_row(item, "auto", str(fid)) for item in read_question_items(str(fid), "auto")]
    assert [r["id"] for r in rows] == ["1", "2"] and rows[0]["reason"] == ""
    assert json.loads(rows[0]["record"]) == {"id": "1", "question": "who?", "answers": ["Ann"], "target": None,
                                             "gold": None}
    assert rows[1]["kind"] == "field 'question': must not be empty" and "record [1]" in rows[1]["reason"]

    hotpot = tmp_path / "hotpot.json"
    hotpot.write_text(json.dumps([{"_id": "h1", "question": "Where was the painter born?", "answer": "Oslo",
                                   "supporting_facts": [["Anna", 0]],
                                   "context": [["Anna", ["Anna was born in Oslo."]], ["Bo", ["Bo is a band."]]]}]))
    (row,) = [parse_row(item, "auto", str(hotpot)) for item in read_question_items(str(hotpot), "auto")]
    # labels retrieved passages that are this paragraph (or a chunk of it), not every passage titled "Anna"
    assert json.loads(row["record"])["gold"] == [["Anna", "Anna was born in Oslo."]]

    parquet = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "question": ["x?", "y?"], "answers": [["1"], []]}), parquet)
    rows = [parse_row(item, "auto", str(parquet)) for item in read_question_items(str(parquet), "parquet")]
    assert rows[0]["reason"] == "" and rows[1]["kind"] == "field 'answers': must not be empty"


def test_an_unknown_format_record_is_rejected_with_the_error_load_any_gives(tmp_path):
    """A record with none of the format keys: parse_row's reject reason is data.load_any's DataError for the same
    file, word for word (the file, the line, the keys expected and the keys found)."""
    from gr_train.data import DataError, load_any
    from ray_jobs.preprocess import parse_row, read_question_items

    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "u1", "query": "who?", "answers": ["Ann"]}) + "\n")
    with pytest.raises(DataError) as raised:
        load_any(path)
    (row,) = [parse_row(item, "auto", str(path)) for item in read_question_items(str(path), "auto")]
    assert row["reason"] == str(raised.value) == (
        f"{path} line 1: cannot detect the format: expected a key 'ctxs' (fid), 'paragraphs' (musique) or "
        "'context' (hotpotqa / 2wiki); got ['answers', 'id', 'query']; pass fmt explicitly")
    assert row["record"] == "" and row["id"] == "u1" and row["kind"].startswith("cannot detect the format")


def test_token_columns_drop_padding():
    import torch

    from ray_jobs.preprocess import to_table, token_columns

    inputs = {"input_ids": torch.tensor([[[5, 6, 0], [7, 0, 0]]]),
              "attention_mask": torch.tensor([[[1, 1, 0], [1, 0, 0]]]), "labels": torch.tensor([[3, 4, -100]])}
    cols = token_columns("reranker", inputs)
    assert cols == {"reranker_input_ids": [[[5, 6], [7]]], "reranker_labels": [[3, 4]]}
    row = {"id": "q", "question": "?", "answers": ["a"], "target": None, "ctxs": [], "schema_version": 2,
           "config_hash": "h", "index_version": "v", "input_index": 0}
    table = to_table([row], cols)
    import pyarrow as pa

    assert table.schema.field("reranker_input_ids").type == pa.list_(pa.list_(pa.int32()))
    assert table.column("reranker_input_ids").to_pylist() == [[[5, 6], [7]]]


@pytest.mark.parametrize("values, depth", [
    ([[1, 2], [3]], 2),
    ([[], [3]], 2),  # an empty first row (a target cut to nothing)
    ([[], []], 2),  # no ids in any row: still one list per row
    ([[[5, 6], [7]]], 3),
    ([[], [[5], [7]]], 3),  # the first row has no passages
    ([[[], [7]], [[5]]], 3),  # the first passage is empty
    ([[[], []]], 3),
])
def test_token_column_depth_is_read_past_empty_lists(values, depth):
    """A token column's nesting comes from its first non-empty lists, not its first element; the column is stored
    with that type and reads back as it was written."""
    import pyarrow as pa

    from ray_jobs.preprocess import list_depth, to_table

    assert list_depth(values) == depth
    row = {"id": "q", "question": "?", "answers": ["a"], "target": None, "ctxs": [], "schema_version": 2,
           "config_hash": "h", "index_version": "v", "input_index": 0}
    table = to_table([dict(row, input_index=i) for i in range(len(values))], {"reader_labels": values})
    expected = pa.int32()
    for _ in range(depth - 1):
        expected = pa.list_(expected)
    assert table.schema.field("reader_labels").type == expected
    assert table.column("reader_labels").to_pylist() == values


def test_load_parquet_restores_the_input_order_when_the_shards_swapped_blocks(tmp_path):
    """Under load the Ray job has written one batch's block after the next one's, despite preserve_order (the demo's
    shards: rows 439-502 after 503-566). Every row carries input_index; load_parquet reads the input order back."""
    import pyarrow.parquet as pq

    from gr_train import synthetic
    from gr_train.config import SyntheticSection
    from gr_train.data import iter_parquet_records, load_parquet
    from ray_jobs.preprocess import input_candidate_rows, to_table

    records = synthetic.generate(SyntheticSection(), 12, seed=0)
    parsed = [{"id": r.id, "question": r.question, "answers": r.answers, "target": None,
               "ctxs": [{"title": c.title, "text": c.text, "is_gold": c.is_gold, "has_answer": c.has_answer}
                        for c in r.ctxs]} for r in records]
    rows = input_candidate_rows(parsed,
                                {"config_hash": "h", "index_version": "input"}, list(range(12)))
    blocks = [rows[0:4], rows[8:12], rows[4:8]]  # the second and third blocks swapped
    (tmp_path / "out").mkdir()
    pq.write_table(to_table(blocks[0] + blocks[1], None), tmp_path / "out" / "a-000000.parquet")
    pq.write_table(to_table(blocks[2], None), tmp_path / "out" / "a-000001.parquet")
    streamed = [r.id for r in iter_parquet_records(tmp_path / "out")]
    assert streamed == [r.id for r in records[:4] + records[8:] + records[4:8]]  # the shards' own order
    assert [r.id for r in load_parquet(tmp_path / "out")] == [r.id for r in records]


def test_input_candidates_keep_each_questions_own_passages(tmp_path):
    """preprocess.candidates=input: the record carries its ctxs with their labels; a question without any is a
    reject naming the line and the field."""
    from ray_jobs.preprocess import input_candidate_rows, parse_row, read_question_items

    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "who?", "answers": ["Ann"],
                                "ctxs": [{"title": "T", "text": "Ann wrote it", "is_gold": True},
                                         {"title": "", "text": "Bob", "is_gold": False}]}) + "\n"
                    + json.dumps({"id": "b", "question": "what?", "answers": ["x"]}) + "\n")
    rows = [parse_row(item, "auto", str(path), keep_ctxs=True) for item in read_question_items(str(path), "auto")]
    assert rows[1]["kind"] == "field 'ctxs': no candidates" and "line 2" in rows[1]["reason"]
    (out,) = input_candidate_rows([json.loads(rows[0]["record"])], {"config_hash": "h", "index_version": "input"},
                                  [rows[0]["index"]])
    assert out["input_index"] == 0
    assert [(c["pid"], c["title"], c["text"], c["is_gold"], c["has_answer"]) for c in out["ctxs"]] == [
        (0, "T", "Ann wrote it", True, True), (1, "", "Bob", False, False)]
    assert parse_row(read_question_items(str(path), "auto")[0], "auto", str(path))["record"].find("ctxs") == -1


TINY_BERT = ("{model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, "
             "max_position_embeddings: 64}")
WORDS = ["query document question title context who wrote the harbour was born in"]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny readers and rerankers of every family saved as HF folders (what a user points name_or_path at)."""
    from gr_train.config import ReaderSection, RerankerSection
    from gr_train.models import build_reader
    from gr_train.reranker import build_reranker, build_word_tokenizer

    root = tmp_path_factory.mktemp("saved")
    folders = {}
    for name, reader_cfg, tok in [
        ("fid_t5", ReaderSection(kind="fid_t5", model_config={"d_model": 16, "num_layers": 1}),
         build_word_tokenizer(WORDS, "t5")),
        ("causal_lm", ReaderSection(kind="causal_lm", model_config={"model_type": "llama"}), None),
    ]:
        reader = build_reader(reader_cfg, tok)
        reader.model.save_pretrained(root / name)
        reader.tokenizer.save_pretrained(root / name)
        folders[name] = root / name
    for kind, style in [("rankt5", "t5"), ("cross_encoder", "bert"), ("bi_encoder", "bert")]:
        model_config = {"d_model": 16, "num_layers": 1} if kind == "rankt5" else {
            "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
        build_reranker(RerankerSection(kind=kind, model_config=model_config),
                       build_word_tokenizer(WORDS, style)).save(root / kind)
        folders[kind] = root / kind
    from gr_train.demo import SHIPPED_READER

    return {**folders, "demo": Path(SHIPPED_READER)}


# Every reader family with a reranker kind, from folders and from configs (demo.yaml's defaults otherwise). The
# saved reranker folders are pointwise (reranker.conditional=false); those built from config are conditional.
TOKENIZER_CASES = {
    "demo folder, bi-encoder from config": lambda m: [f"reader.name_or_path={m['demo']}"],
    "demo from config, cross-encoder from config": lambda m: [
        "reader.name_or_path=null", "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.kind=cross_encoder", f"reranker.model_config={TINY_BERT}"],
    "fid_t5 folder, rankt5 folder": lambda m: [
        "reader.kind=fid_t5", f"reader.name_or_path={m['fid_t5']}", "reader.passage_max_tokens=24",
        "reranker.kind=rankt5", f"reranker.name_or_path={m['rankt5']}", "reranker.conditional=false"],
    "causal_lm folder, cross-encoder folder": lambda m: [
        "reader.kind=causal_lm", f"reader.name_or_path={m['causal_lm']}", "reader.passage_max_tokens=24",
        "reader.answer_eos=false", "reranker.kind=cross_encoder", f"reranker.name_or_path={m['cross_encoder']}",
        "reranker.conditional=false"],
    "causal_lm from config, bi-encoder folder": lambda m: [
        "reader.kind=causal_lm", "reader.name_or_path=null", "reader.model_config={model_type: llama}",
        "reader.passage_max_tokens=24",
        "reader.prompt_max_tokens=30", f"reranker.name_or_path={m['bi_encoder']}", "reranker.conditional=false"],
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_preprocess_tokenizer_builds_no_model_and_matches_the_models(case, saved_models):
    """The Ray Data workers' Tokenizer holds the models' input builders only (no module, no weights) and writes
    exactly the token ids the real models' tokenize gives, for every reader family and reranker kind."""
    import torch

    from gr_train import synthetic
    from gr_train.models import build_models
    from ray_jobs.preprocess import Tokenizer, token_columns

    cfg = load_config(REPO / "configs" / "demo.yaml", TOKENIZER_CASES[case](saved_models))
    tok = Tokenizer(cfg)
    assert not isinstance(tok.reader, torch.nn.Module) and not isinstance(tok.reranker, torch.nn.Module)
    records = synthetic.generate(cfg.synthetic, 40, seed=3)
    rows = [{"question": r.question, "answers": r.answers, "target": r.target,
             "ctxs": [{"title": c.title, "text": c.text} for c in r.ctxs]} for r in records]
    reader, reranker = build_models(cfg)
    questions = [r.question for r in records]
    passages = [[(c.title, c.text) for c in r.ctxs] for r in records]
    expected = {**token_columns("reader", reader.tokenize(questions, passages, [r.answers[0] for r in records])),
                **token_columns("reranker", reranker.tokenize(questions, passages))}
    got = tok(rows)
    assert got == expected
    assert dict(tok.reader.truncations.counts) == dict(reader.truncations.counts)


def test_preprocess_tokenizer_imports_no_modeling_code(saved_models):
    """A worker's Tokenizer loads tokenizers and configs only: transformers' modeling code (PreTrainedModel and the
    architectures, seconds to import: the larger part of a worker's start) is never imported, for HF folders of
    every family either."""
    script = f"""
import sys
from gr_train.config import load_config
from ray_jobs.preprocess import Tokenizer
for overrides in {[TOKENIZER_CASES[c](saved_models) for c in TOKENIZER_CASES]!r}:
    tok = Tokenizer(load_config({str(REPO / "configs" / "demo.yaml")!r}, overrides))
    tok([{{"question": "who wrote it", "answers": ["ann"], "target": None, "ctxs": [{{"title": "t", "text": "x"}}]}}])
# PreTrainedModel and every architecture's modeling file (the auto classes' name tables are light and allowed)
print(sorted(m for m in sys.modules if m == "transformers.modeling_utils"
             or (m.startswith("transformers.models.") and ".modeling_" in m and ".auto." not in m)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_preprocess_input_candidates_on_ray_keeps_order_and_counts(tmp_path, ray_local):
    """Ray Data with the questions' own candidates: every good record written in input order with its passages and
    labels, the bad one in rejects.jsonl, the manifest's counts add up; training reads the shards back."""
    from gr_train import synthetic
    from gr_train.config import SyntheticSection
    from gr_train.data import load_any, save_records
    from ray_jobs import preprocess

    records = synthetic.generate(SyntheticSection(), 90, seed=4)
    save_records(records, tmp_path / "q.jsonl")
    with open(tmp_path / "q.jsonl", "a") as f:
        f.write('{"id": "bad", "question": "no candidates", "answers": ["x"]}\n')
    from gr_train.demo import SHIPPED_READER

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"reader.name_or_path={SHIPPED_READER}", "preprocess.candidates=input",
        f"preprocess.questions_path={tmp_path / 'q.jsonl'}", f"preprocess.output_dir={tmp_path / 'out'}",
        "preprocess.num_workers=1", "preprocess.worker_num_cpus=0.5", "preprocess.batch_size=16",
        "preprocess.rows_per_file=40"])
    (tmp_path / "out").mkdir()
    stale = [tmp_path / "out" / "part-000999999.parquet", tmp_path / "out" / ".part-000000005.parquet.tmp"]
    for path in stale:  # a previous run's file, and one a crash left half written
        path.write_bytes(b"PAR1")
    summary = preprocess.run(cfg, progress=False)
    assert not any(path.exists() for path in stale)
    assert (summary["input"], summary["written"], summary["rejected"]) == (91, 90, 1)
    assert len(summary["files"]) >= 3  # 40 rows per file at most
    # Each file is written by its worker, named by its first input position, its rows in input order; no temporary
    # file is left behind.
    import pyarrow.parquet as pq

    for name in summary["files"]:
        positions = pq.read_table(tmp_path / "out" / name, columns=["input_index"])["input_index"].to_pylist()
        assert name == preprocess.shard_name(positions[0]) and positions == sorted(positions) and len(positions) <= 40
    assert not list((tmp_path / "out").glob(".*"))
    (reject,) = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "bad" and "line 91" in reject["reason"]
    back = load_any(tmp_path / "out")
    assert [r.id for r in back] == [r.id for r in records]
    assert all([(c.title, c.text, c.is_gold, c.has_answer) for c in a.ctxs]
               == [(c.title, c.text, c.is_gold, c.has_answer) for c in b.ctxs] for a, b in zip(back, records))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["index_version"] == "input"
    # one node here: it wrote every file (tests/test_ray_cluster.py: two)
    assert list(manifest["files_by_node"].values()) == [len(summary["files"])]
    quality = checks.candidate_quality(records, cfg.data.n_candidates)
    assert manifest["candidate_quality"] == {"n_candidates": cfg.data.n_candidates, **quality}
    assert quality["questions"] == 90 and 0 < quality["yes_no"] + quality["labelled"]


def test_a_shard_is_written_atomically_and_a_retried_batch_rewrites_it(tmp_path, monkeypatch):
    """write_shard: the file appears under its final name only when complete (a crash mid-write leaves a hidden
    temporary file, which no reader globs and the next run removes); a retried batch rewrites the same file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_jobs import preprocess

    table = pa.table({"id": ["a", "b"], "input_index": pa.array([7, 8], pa.int64())})
    assert preprocess.write_shard(table, str(tmp_path)) == {"file": "part-000000007.parquet", "rows": 2}
    assert preprocess.write_shard(table, str(tmp_path)) == {"file": "part-000000007.parquet", "rows": 2}
    assert pq.read_table(tmp_path / "part-000000007.parquet").equals(table)

    def crash(table, where, **options):  # options: write_shard's row_group_size
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(preprocess.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        preprocess.write_shard(table.slice(1), str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["part-000000007.parquet"]
    assert (tmp_path / ".part-000000008.parquet.tmp").is_file()


def test_rows_per_shard_gives_each_worker_about_four_files():
    from gr_train.config import PreprocessSection
    from ray_jobs.preprocess import rows_per_shard

    pp = PreprocessSection(num_workers=2, batch_size=256, rows_per_file=5000)
    assert rows_per_shard(20000, pp) == 2500  # 4 files per worker
    assert rows_per_shard(200000, pp) == 5000  # capped by rows_per_file
    assert rows_per_shard(90, PreprocessSection(num_workers=1, batch_size=16, rows_per_file=40)) == 23
    assert rows_per_shard(0, pp) == 1


@pytest.mark.parametrize("job, overrides, expected", [
    (["ray_jobs/train.py"], ["data.train_path=/nonexistent/train.jsonl"],
     "data.train_path=/nonexistent/train.jsonl: no such file"),
    (["-m", "ray_jobs.evaluate"], [], "data.dev_path: not set"),
    (["-m", "ray_jobs.preprocess"], ["preprocess.questions_path=/nonexistent/q.jsonl"],
     "preprocess.questions_path=/nonexistent/q.jsonl: no such file"),
    (["-m", "ray_jobs.retrieve"], ["--questions", "q.jsonl", "--out", "o.jsonl", "retrieval.index_dir=/nonexistent"],
     "retrieval.index_dir=/nonexistent: no index there"),
])
def test_a_ray_jobs_mistake_is_one_line_before_ray_starts(job, overrides, expected):
    """The Ray entrypoints check their config as the gr-train commands do: one `error:` line naming the key, exit
    code 2, no traceback, and no Ray started (a cluster's start-up is not spent on a typo)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, *job, "--config", "configs/demo.yaml", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"python {' '.join(job)}: error: {expected}"), \
        proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_the_ray_training_job_refuses_a_folder_holding_another_run(tmp_path):
    """As `gr-train train`: a run.run_dir with a run in it and no checkpoint to resume is refused before Ray starts
    (its tb/ would get a second set of curves), by the check `gr-train train` runs (checks.check_run_dir, whose
    --overwrite is tested with the CLI); a command that fails its config check deletes nothing."""
    from gr_train import synthetic
    from gr_train.config import load_config

    train, dev = synthetic.write_demo_data(load_config("configs/demo.yaml", ["synthetic.n_train=8",
                                                                              "synthetic.n_dev=4"]).synthetic,
                                           tmp_path / "data", seed=0)
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "tb" / "scalars.jsonl").write_text("{}\n")
    (run / "config.yaml").write_text("run: {}\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "ray_jobs/train.py", "--config", "configs/demo.yaml", f"run.run_dir={run}",
           f"data.train_path={train}", f"data.dev_path={dev}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"run.run_dir={run} already holds a run" in proc.stderr.strip().splitlines()[-1]
    assert (run / "tb" / "scalars.jsonl").is_file()
    proc = subprocess.run([*cmd, "--overwrite", "data.train_path=/nonexistent/train.jsonl"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "data.train_path=/nonexistent/train.jsonl: no such file" in proc.stderr
    assert (run / "tb").exists()  # the config check comes first: a bad command deletes nothing


@pytest.mark.parametrize("job, last", [
    ("build_index", "index.json is written last."),
    ("retrieve", "whichever is longer."),
    ("preprocess", "the job\nfails if the counts do not add up."),
    ("evaluate", "Writes\n<run_dir>/eval.json (or --output)."),
])
def test_a_ray_jobs_help_is_its_whole_docstring(job, last):
    """`python -m ray_jobs.<job> --help`: what the job does, the submit command (its line break kept) and what it
    reads and writes, to the last sentence; not the docstring's first line, cut mid-sentence, or nothing at all."""
    proc = subprocess.run([sys.executable, "-m", f"ray_jobs.{job}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python -m ray_jobs.{job}")
    assert "-- \\\n" in proc.stdout or f"ray_jobs.{job} \\\n" in proc.stdout  # the command's continuation line
    assert proc.stdout.split("\n\npositional arguments:")[0].endswith(last)


def test_a_small_job_keeps_both_workers_busy(tmp_path, ray_local):
    """Fewer questions than two batches: each worker still gets a block of its own (Ray Data warned that the
    actor pool received one input, and one worker tokenized everything)."""
    import warnings

    from gr_train import synthetic
    from gr_train.config import SyntheticSection
    from gr_train.data import load_any, save_records
    from gr_train.demo import SHIPPED_READER
    from ray_jobs import preprocess

    records = synthetic.generate(SyntheticSection(), 40, seed=5)
    save_records(records, tmp_path / "q.jsonl")
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"reader.name_or_path={SHIPPED_READER}", "preprocess.candidates=input",
        f"preprocess.questions_path={tmp_path / 'q.jsonl'}", f"preprocess.output_dir={tmp_path / 'out'}",
        "preprocess.num_workers=2", "preprocess.worker_num_cpus=0.5", "preprocess.batch_size=64"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = preprocess.run(cfg, progress=False)
    assert not [w for w in caught if "concurrent actors" in str(w.message)], [str(w.message) for w in caught]
    assert summary["written"] == 40 and len(summary["files"]) == 8  # 5 questions per file: 4 per worker
    assert [r.id for r in load_any(tmp_path / "out")] == [r.id for r in records]


def test_a_block_whose_questions_were_all_rejected_writes_no_file(tmp_path):
    import pyarrow as pa

    from ray_jobs import preprocess

    cfg = load_config(REPO / "configs" / "demo.yaml", ["preprocess.tokenize=false"])
    stage = preprocess.InputCandidatesStage(cfg, {"config_hash": "h", "index_version": "input"}, str(tmp_path))
    out = stage(preprocess.PARSED_SCHEMA.empty_table())
    assert out.num_rows == 0 and out.schema == preprocess.SHARDS_SCHEMA and not list(tmp_path.iterdir())


def test_preprocess_counts_the_questions_without_an_answer_bearing_or_gold_candidate(tmp_path):
    """Each shard's report carries checks.candidate_quality of its rows among the first data.n_candidates (the
    manifest sums them: test_preprocess_input_candidates_on_ray_keeps_order_and_counts)."""
    import pyarrow as pa

    from ray_jobs import preprocess

    rows = [
        {"id": "q1", "question": "who wrote it?", "answers": ["Ann"],
         "ctxs": [{"title": "A", "text": "Ann wrote it", "is_gold": True}, {"text": "Bob", "is_gold": False}]},
        {"id": "q2", "question": "who sang?", "answers": ["Cid"],
         "ctxs": [{"text": "Bob", "is_gold": False}, {"text": "Dan", "is_gold": False},
                  {"text": "Cid sang", "is_gold": True}]},
        {"id": "q3", "question": "is it?", "answers": ["yes"], "ctxs": [{"text": "x", "is_gold": False}]},
        {"id": "q4", "question": "who ran?", "answers": ["Eve"], "ctxs": [{"text": "Bob"}, {"text": "Dan ran"}]},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parsed = [preprocess.parse_row(item, "auto", str(path), keep_ctxs=True)
              for item in preprocess.read_question_items(str(path), "auto")]
    cfg = load_config(REPO / "configs" / "demo.yaml", ["preprocess.tokenize=false", "data.n_candidates=2"])
    stage = preprocess.InputCandidatesStage(cfg, {"config_hash": "h", "index_version": "input"}, str(tmp_path))
    (report,) = stage(pa.Table.from_pylist(parsed, schema=preprocess.PARSED_SCHEMA)).to_pylist()
    report.pop("node")  # the Ray node it ran on (None outside Ray)
    assert report == {"file": "part-000000000.parquet", "rows": 4, "questions": 4, "yes_no": 1, "no_answer": 2,
                      "labelled": 3, "no_gold": 2}


def test_a_question_file_that_is_not_utf8_names_the_line_and_the_record(tmp_path):
    from gr_train.data import DataError
    from ray_jobs.preprocess import read_question_items

    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"id": "a", "question": "who?", "answers": ["x"]}\n'
                     b'{"id": "b", "question": "wh\xe9re?", "answers": ["y"]}\n')
    with pytest.raises(DataError, match=rf"^{path} line 2 \(id b\): not UTF-8 text: byte\(s\) e9 at column 28"):
        read_question_items(str(path), "auto")


def test_a_shard_of_over_2_gib_of_passage_text_is_written_in_row_groups_that_read_back(tmp_path):
    """22 questions x 100 candidates of ~1 MB (2.05 GiB of nested text): one row group of that size cannot be read
    (pyarrow: 'Nested data conversions not implemented for chunked array outputs'). write_shard bounds its row groups
    by bytes, and the readers read any row group in batches, so the file written before the fix (one group) reads
    back too; every record comes back whole."""
    import pyarrow.parquet as pq

    from gr_train.data import PARQUET_SCHEMA_VERSION, iter_parquet_records, load_parquet
    from ray_jobs.preprocess import ROW_GROUP_BYTES, to_table, write_shard

    text = "w " * 500_000  # 1,000,000 characters
    rows = [{"id": f"q{q}", "question": f"question {q}", "answers": ["w"], "target": "w",
             "ctxs": [{"title": f"t{q}-{i}", "text": text, "is_gold": i == q % 100, "has_answer": True}
                      for i in range(100)],
             "schema_version": PARQUET_SCHEMA_VERSION, "config_hash": "x", "index_version": "", "input_index": q}
            for q in range(22)]
    table = to_table(rows, None)
    del rows
    assert table.nbytes > 2 * 2**30
    (tmp_path / "new").mkdir()
    write_shard(table, str(tmp_path / "new"))
    pf = pq.ParquetFile(tmp_path / "new" / "part-000000000.parquet")
    assert pf.num_row_groups > 1
    assert max(pf.metadata.row_group(g).total_byte_size for g in range(pf.num_row_groups)) < 2 * ROW_GROUP_BYTES
    (tmp_path / "old").mkdir()
    pq.write_table(table, tmp_path / "old" / "part-000000000.parquet")  # one row group, as before the fix
    del table
    assert pq.ParquetFile(tmp_path / "old" / "part-000000000.parquet").num_row_groups == 1

    def check(records):
        assert [r.id for r in records] == [f"q{q}" for q in range(22)]
        for q, r in enumerate(records):
            assert len(r.ctxs) == 100 and [p.is_gold for p in r.ctxs].index(True) == q % 100
            assert r.ctxs[99].title == f"t{q}-99" and len(r.ctxs[99].text) == 1_000_000

    check(load_parquet(tmp_path / "new"))
    check(list(iter_parquet_records(tmp_path / "old")))
