"""Index shards: sharded search equals one index (BM25 and dense, 2 and 3 shards), BM25 equals bm25s, save/load."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gr_train import retrieval as R
from gr_train.config import load_config
from gr_train.data import passage_string

WORDS = ("river castle bridge painter novel harbour mountain violin engine garden museum comet village orchard "
         "lantern glacier falcon temple canyon market").split()


def write_corpus(path, n=120, seed=0):
    """n short passages over a small vocabulary (many shared terms, some exact duplicates: ties happen)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 12))
        rows.append({"id": f"p{i}", "title": rng.choice(WORDS).title(), "text": " ".join(words)})
    rows[7] = dict(rows[3], id="p7")  # an exact duplicate: its score ties with p3's on every query
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def questions(n=25, seed=1):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(n)] + ["zzz unknown words", "the a an"]


def cfg_for(tmp_path, kind, n_shards, corpus):
    return load_config(None, [f"retrieval.kind={kind}", f"retrieval.corpus_path={corpus}",
                              f"retrieval.index_dir={tmp_path / f'{kind}-{n_shards}'}",
                              f"retrieval.n_shards={n_shards}", "retrieval.block_size=8",
                              "retrieval.encoder_batch_size=8", "retrieval.encoder_max_tokens=32"])


@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_sharded_search_equals_one_index(tmp_path, kind):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus)
    qs = questions()
    results = {}
    for n_shards in (1, 2, 3):
        cfg = cfg_for(tmp_path, kind, n_shards, corpus)
        meta = R.build_index(cfg)
        sizes = [b - a for a, b in meta["bounds"]]
        assert sum(sizes) == 120 and all(s > 0 for s in sizes) and len(sizes) == n_shards
        results[n_shards] = R.ShardedIndex(cfg.retrieval.index_dir).search(qs, k=10)
    one = results[1]
    assert one.ids.shape == (len(qs), 10)
    for n_shards in (2, 3):
        hits = results[n_shards]
        np.testing.assert_array_equal(hits.ids, one.ids)
        np.testing.assert_array_equal(hits.scores, one.scores)  # bit-identical, not merely close
        np.testing.assert_array_equal(hits.text, one.text)
        np.testing.assert_array_equal(hits.docid, [[f"p{i}" for i in row] for row in one.ids])
    # Ordered by score desc then id asc; the duplicate pair p3/p7 appears with equal scores, p3 first.
    for q in range(len(qs)):
        s, i = one.scores[q], one.ids[q]
        assert all((s[j] > s[j + 1]) or (s[j] == s[j + 1] and i[j] < i[j + 1]) for j in range(9))
    if kind == "dense":
        assert one.scores.max() <= 1.0001 and one.scores[:, 0].min() > 0.1  # cosine of normalised embeddings
    else:
        assert one.scores[-2].max() == 0.0 and one.scores[-1].max() == 0.0  # unknown words / only stopwords


def test_bm25_scores_match_bm25s_single_index(tmp_path):
    import bm25s

    corpus = tmp_path / "corpus.jsonl"
    rows = write_corpus(corpus)
    cfg = cfg_for(tmp_path, "bm25", 3, corpus)
    R.build_index(cfg)
    index = R.ShardedIndex(cfg.retrieval.index_dir)
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(bm25s.tokenize([passage_string(r["title"], r["text"]) for r in rows], stopwords="en",
                             show_progress=False), show_progress=False)
    for q in questions()[:-2]:
        expected = ref.get_scores(bm25s.tokenize(q, stopwords="en", return_ids=False, show_progress=False)[0])
        hits = index.search([q], k=120)
        got = np.zeros(120, dtype=np.float32)
        got[hits.ids[0]] = hits.scores[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_shard_bounds_and_parquet_slices(tmp_path):
    assert R.shard_bounds(120, 3, 8) == [(0, 40), (40, 80), (80, 120)]
    assert R.shard_bounds(100, 3, 8) == [(0, 40), (40, 72), (72, 100)]
    assert R.shard_bounds(5, 3, 8) == [(0, 5), (5, 5), (5, 5)]
    table = pa.table({"id": [f"p{i}" for i in range(50)], "text": [f"t{i}" for i in range(50)]})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    part = R.read_corpus_slice(tmp_path / "c.parquet", 12, 30)
    assert part["docid"].to_pylist() == [f"p{i}" for i in range(12, 30)]
    assert part["title"].to_pylist() == [""] * 18
    tsv = tmp_path / "c.tsv"
    tsv.write_text('id\ttext\ttitle\n1\t"hello world"\tGreeting\n2\tsecond passage\t\n')
    assert R.read_corpus(tsv).to_pylist() == [{"docid": "1", "title": "Greeting", "text": "hello world"},
                                              {"docid": "2", "title": "", "text": "second passage"}]
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="missing"):
        R.read_corpus(tmp_path / "bad.parquet")


def test_saved_shard_reloads_and_answers_the_same(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus)
    cfg = cfg_for(tmp_path, "bm25", 2, corpus)
    meta = R.build_index(cfg)
    folder = R.shard_dir(cfg.retrieval.index_dir, 1)
    shard = R.load_shard(folder)
    assert (shard.start, shard.end) == tuple(meta["bounds"][1])
    queries = R.bm25_tokenize(questions(), "en")
    a = shard.search(queries, 5)
    assert (a.ids >= shard.start).all() and (a.ids < shard.end).all()
    np.testing.assert_array_equal(R.load_shard(folder).search(queries, 5).ids, a.ids)
    (folder / "shard.json").unlink()  # as if the build had been killed before finishing
    with pytest.raises(FileNotFoundError, match="did not finish"):
        R.load_shard(folder)


def test_index_version_changes_with_parameters_and_corpus(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus)
    v1 = R.index_meta(cfg_for(tmp_path, "bm25", 2, corpus).retrieval, 120)["index_version"]
    assert v1 == R.index_meta(cfg_for(tmp_path, "bm25", 2, corpus).retrieval, 120)["index_version"]
    assert v1 != R.index_meta(cfg_for(tmp_path, "bm25", 3, corpus).retrieval, 120)["index_version"]
    write_corpus(corpus, seed=5)
    assert v1 != R.index_meta(cfg_for(tmp_path, "bm25", 2, corpus).retrieval, 120)["index_version"]
