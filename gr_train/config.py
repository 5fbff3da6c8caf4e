"""Typed run configuration: dataclass sections, YAML files, `section.key=value` overrides.

Each section is read by the module of the same name (`cfg.gumbel` by gumbel.py, `cfg.reader` by reader.py, ...).
Load with `load_config(path, overrides)`; unknown keys and type mismatches fail with the key named.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


# The keys of objectives.OBJECTIVES, declared here so that validating a config does not import torch (a test checks
# that the two agree): gumbel (G-Rerank) | emdr | pdist | loop | adist (Atlas baselines) | supervised (is_gold
# labels) | reader (reader pre-training, all passages visible).
ObjectiveName = Literal["gumbel", "emdr", "pdist", "loop", "adist", "supervised", "reader"]
# Objectives that read the reader's attention probabilities (Reader.passage_attention), and the HF attention
# backends that return them (output_attentions); the demo reader records its own and takes any backend.
ATTENTION_OBJECTIVES = ("adist",)
ATTENTION_BACKENDS = ("eager",)
# The keys of models.READERS, reranker.RERANKERS and gumbel.ESTIMATORS (checked by a test).
ReaderKind = Literal["demo_fid", "fid_t5", "causal_lm"]
RerankerKind = Literal["cross_encoder", "rankt5", "bi_encoder", "causal_lm"]
Estimator = Literal["max_softmax", "subset", "straight_through", "score_function"]
PromptStyle = Literal["plain", "chat"]  # reader.prompt (inputs.query_prompts)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


@dataclass
class RunSection:
    run_dir: str = "runs/default"  # where checkpoints, TensorBoard logs, results and config.yaml go
    seed: int = 0  # seeds data order, model init and Gumbel noise
    device: str = "cpu"  # torch device for the single-process runtime ("cpu", "cuda")
    progress: bool = True  # tqdm progress bars on long loops
    # torch / OpenMP / MKL threads per process; 0 = automatic (gr_train/threads.py): the cores free to this process
    # (affinity mask less the load of other work) shared among this machine's ranks, never ranks x threads > cores
    num_threads: int = 0


@dataclass
class SyntheticSection:
    """The embedded multi-hop data generator (synthetic.py)."""

    n_works: int = 30  # vocabulary size of each entity type (works, people, towns); one token each
    n_people: int = 30  # people: bridge entities (the object of "W created-by P")
    n_towns: int = 30  # towns: the answers (the object of "P born-in T")
    n_chains: int = 5  # chains (bridge + answer passage) per question; 1 gold chain, the rest distractors
    one_hop_fraction: float = 0.3  # share of one-hop questions in the stream and in generated files
    # Structure knobs (0 / 1 = the demo's structure). Copies of each gold passage (exact duplicates, all gold, as
    # near-duplicates in a retrieved list; fact coverage@k asks for one copy of each fact):
    gold_copies: int = 1
    answer_distractors: int = 0  # extra single "P born-in T" passages (answer-typed, outside every chain)
    bridge_distractors: int = 0  # extra single "W created-by P" passages (bridge-typed, outside every chain)
    # Topical distractors: single passages that name the question's entity with another relation whose object is a
    # town (answer-typed): "W set-in T" for a work, "P lives-in T" for a person. They add two relation words to the
    # vocabulary, so a reader must be trained with them (configs/demo_reader_topical.yaml).
    topical_distractors: int = 0
    # One-hop shortcuts: share of two-hop questions whose answer passages also state their chain's bridge fact
    # ("W created-by P born-in T"), so the gold answer passage names the question's work and the bridge passage
    # (still labelled gold, as HotpotQA labels both supporting facts) is not needed. 5-token passages.
    shortcut_fraction: float = 0.0
    # Three-hop questions: share of the multi-hop questions that ask "twin-of-birthplace-of-creator W" (W created-by P,
    # P born-in T, T twinned-with T2; every chain gains its third passage). Only the first gold passage names the
    # question's work. Two more words, so a reader must be trained with them (configs/demo_reader_three_hop.yaml).
    three_hop_fraction: float = 0.0
    n_train: int = 3000  # questions written to train.jsonl by `demo` / `generate`
    n_dev: int = 300  # questions written to dev.jsonl
    curriculum: list[list[int]] = field(default_factory=list)  # [[steps, n_chains], ...] before n_chains (reader training)


@dataclass
class DataSection:
    train_path: str | None = None  # FiD JSON/JSONL file; None = the synthetic stream (reader pre-training)
    dev_path: str | None = None  # FiD JSON/JSONL file with is_gold labels, used for evaluation
    n_candidates: int = 10  # candidates per question seen by reranker and reader; extra ones are cut (counted, logged)
    shuffle: bool = True  # reshuffle the training file every epoch
    # train warns when more than this share of the training questions (yes/no questions aside) has no answer-bearing
    # candidate (has_answer) among its first n_candidates: the reader's loss gives those nothing to reward
    max_no_answer_fraction: float = 0.2
    # drop the training questions with no answer-bearing candidate among their first n_candidates (yes/no questions
    # are kept); counted and logged either way
    drop_no_answer: bool = False


@dataclass
class ReaderSection:
    kind: ReaderKind = "demo_fid"  # demo_fid (plain-torch FiD, demo) | fid_t5 (HF T5 FiD) | causal_lm (HF decoder-only)
    name_or_path: str | None = None  # HF hub id or local folder; None = build from `model_config` (random weights)
    # a frozen reader with no name_or_path has random weights, and EM or a training signal from it means nothing:
    # the commands refuse it unless this is true (tests, benchmarks). A trainable reader (objective.name=reader)
    # starts from random weights by design and needs no opt-in.
    random_init: bool = False
    model_config: dict[str, Any] = field(default_factory=dict)  # config overrides when building from scratch
    tokenizer_path: str | None = None  # tokenizer folder or hub id when name_or_path ships none (FiD checkpoints)
    passage_max_tokens: int = 32  # tokens per (question + title + passage) input, L
    answer_max_tokens: int = 8  # target tokens, T
    # causal_lm: tokens of the prompt ("question: q\nanswer:"); a longer prompt's question is cut from the left, the
    # template kept whole (counted, warned);
    # 0 = what the model's position limit leaves after passage_max_tokens + answer_max_tokens (no limit: no cut)
    prompt_max_tokens: int = 0
    attn_implementation: str = "eager"  # HF attention backend for the answer pass: eager | sdpa
    # weights and activations of the reader, whatever dtype its checkpoint was saved in; None = runtime.precision
    # (fp32 under the local engine). A set value must equal runtime.precision under the deepspeed engine.
    dtype: Literal["fp32", "bf16", "fp16"] | None = None
    trainable: bool = False  # true only for reader pre-training / fine-tuning (objective.name=reader)
    # demo_fid built from model_config: start from this demo reader folder's weights instead of a random init (the
    # vocabulary may have grown: embedding rows are matched by token, new tokens keep their random rows)
    init_from: str | None = None
    aux_loss_weight: float = 1.0  # demo reader: weight of the intermediate-entity (deep supervision) loss
    # causal_lm: how the question is asked after the passages. plain: "question: q\nanswer:" | chat: the tokenizer's
    # own chat template with one user turn "{instruction}\nQuestion: q" (instruct models; inputs.query_prompts)
    prompt: PromptStyle = "plain"
    instruction: str = "Answer the question from the passages. Reply with the answer only, in a few words."  # chat
    answer_eos: bool = True  # the target ends with the tokenizer's eos token (false: answer tokens only)
    # Reader fine-tuning (objective.name=reader, HF readers; reader_tuning.py). Only the top N transformer layers
    # train (decoder-only: the last N blocks + final norm; FiD-T5: the last N decoder blocks + final norm); 0 = all
    train_layers: int = 0
    lora_rank: int = 0  # > 0: LoRA adapters of this rank (peft) on lora_targets; the base weights stay frozen
    lora_alpha: float = 16.0  # LoRA scaling alpha / rank
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # module names
    # Reader fine-tuning: each valid candidate is hidden from a question with this probability at every step (passage
    # dropout; at least one stays visible), so the reader also learns from smaller passage sets, answer passage
    # absent included, as G-Rerank's top-k mask later gives it. 0 = every passage visible (the paper's step 1)
    passage_dropout: float = 0.0


@dataclass
class RerankerSection:
    kind: RerankerKind = "cross_encoder"  # cross_encoder | rankt5 | bi_encoder | causal_lm
    name_or_path: str | None = None  # HF hub id or local folder; None = build from `model_config`
    model_config: dict[str, Any] = field(default_factory=dict)  # config overrides when building from scratch
    tokenizer_path: str | None = None  # tokenizer folder when it differs from name_or_path (demo: built locally)
    max_tokens: int = 64  # tokens per (question, passage) pair
    score_scale: float = 20.0  # bi_encoder: w = scale * cos(q, d)
    score_token: str = "<extra_id_10>"  # rankt5: w = logit of this token at the first decoder step
    # causal_lm: the task line of the Qwen3-Reranker prompt (inputs.CausalLMRerankerInputs); w = logit(yes_token) -
    # logit(no_token) at the prompt's last token, each exactly one token of the tokenizer
    instruction: str = "Given a web search query, retrieve relevant passages that answer the query"
    yes_token: str = "yes"  # causal_lm: the token whose logit counts for the passage
    no_token: str = "no"  # causal_lm: the token whose logit counts against it
    lora_rank: int = 0  # > 0: LoRA adapters of this rank (peft) on lora_targets, the base weights frozen; 0 = full
    lora_alpha: float = 16.0  # LoRA scaling alpha / rank
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # module names
    gradient_checkpointing: bool = False  # recompute layer activations in backward (less memory, ~1/3 more compute)
    # true: choose the k passages one at a time, step t scoring every remaining candidate against the question
    # followed by the passages chosen before it (selection.py; multi-hop dense retrieval's query); step 1 is the
    # plain reranker. false: one independent score per passage, top-k
    conditional: bool = False
    # tokens of a conditioned question (bi_encoder) or pair (cross_encoder, rankt5, causal_lm); 0 = 2 * max_tokens
    conditional_max_tokens: int = 0

    def condition_tokens(self) -> int:
        """The token budget of conditioned inputs (conditional_max_tokens, or 2 * max_tokens when 0)."""
        return self.conditional_max_tokens or 2 * self.max_tokens


@dataclass
class GumbelSection:
    """The training mask (gumbel.py): an estimator of the top-k of the scores w, perturbed by Gumbel noise G."""

    # max_softmax: the paper's M = max_j softmax((kappa * w + G_j) / tau) | subset: relaxed k-subset, sum M = k
    # | straight_through: the reader reads the hard Gumbel top-k sample, gradients of the relaxed k-subset (with
    # reranker.conditional: of each step's Gumbel-softmax) | score_function: the reader reads each of gumbel.samples
    # sampled k-sets (no gradient through it); the reranker gets (loss - the other samples' mean loss) times the
    # gradient of the set's log-probability, sum_t log p(i_t | i_<t) (REINFORCE, leave-one-out baseline)
    # The default is the estimator the selection study supports at every k (docs/study/selection/results.md): on the
    # demo's data straight-through collapsed at k=2 on every seed where score_function kept its bridges
    estimator: Estimator = "score_function"
    k: int = 2  # passages kept (max_softmax: number of softmax samples during training; top-k at inference)
    # a curriculum over k: [[steps, k], ...] trained in order from step 0, then gumbel.k for the rest (evaluation and
    # best/ always use gumbel.k). A larger k first leaves the reader's loss a slope where the final k has none: on the
    # selection study's three-hop data, k=3 from the start never found the chain, [[600, 6]] then k=3 did on every
    # seed (docs/study/selection/README.md). [] = off
    k_curriculum: list[list[int]] = field(default_factory=list)
    tau: float = 0.5  # temperature at step 0
    tau_end: float | None = None  # temperature at max_steps; None = constant
    kappa: float = 1.0  # score scale at step 0
    kappa_end: float | None = None  # score scale at max_steps; None = constant
    # true: kappa multiplies w / std(w) per question (std over the candidates, no gradient), so the score spread
    # relative to the Gumbel noise stays kappa whatever scale the reranker's scores drift to; false: kappa * w
    kappa_relative: bool = False
    schedule: Literal["linear", "cosine", "exponential"] = "linear"  # interpolation of tau and kappa
    noise: bool = True  # false = the paper's no-noise ablation
    eps: float = 1e-9  # log M is log(clamp(M, eps)); straight_through: log(M + eps), so M = 0 keeps a gradient
    # masks (score_function: sampled k-sets) drawn per question per step, fresh noise each; the loss is their mean.
    # 0 = the estimator's own: 4 for score_function (each set's baseline is the others' mean loss), 1 for the others
    samples: int = 0
    # beta of beta * KL(pi || pi_ref) added to G-Rerank's loss (the KL penalty of RLHF's PPO, Ouyang et al. 2022):
    # pi the step policies softmax(kappa * w_t) over the remaining candidates of each drawn sequence, pi_ref those of
    # the reranker as training started (a frozen copy of its initial weights, dropout off; gumbel.kl_reference),
    # summed over the k steps, mean over questions and samples. Where the reader's loss cannot tell passages apart (a bridge the
    # answer passage makes redundant) the ranking stays where it started instead of drifting. The sequential path
    # only (gumbel.estimator=score_function, or reranker.conditional); costs a no-grad reranker pass per step and a
    # copy of the reranker per rank. 0 = off
    kl_coef: float = 0.0
    # pi_ref of the KL penalty for a conditional reranker: "pointwise" = the start's step-1 scores at every step over
    # the remaining candidates (the start read as the pointwise reranker it was pretrained as: the Plackett-Luce
    # sequence of its ranking, whose top k is its hard top-k), "conditional" = the start's own step policies (each
    # step scored given the prefix, as the trained reranker is: for a start that was itself trained conditionally).
    # The same for a pointwise reranker. The default is the one the selection study supports: from a pretrained
    # pointwise cross-encoder it kept the bridges the conditional one lost (coverage@2 1.000 against 0.289 on those
    # questions), from a random bi-encoder the two were level (docs/study/selection/README.md)
    kl_reference: str = "pointwise"

    def sample_count(self) -> int:
        """The masks drawn per question per step: samples, or the estimator's own when 0 (4 for score_function, 1
        for the relaxations and straight_through)."""
        return self.samples or (4 if self.estimator == "score_function" else 1)


@dataclass
class ObjectiveSection:
    """What trains the reranker (objectives.py). All reranker objectives share the frozen reader and data."""

    name: ObjectiveName = "gumbel"  # a row of objectives.OBJECTIVES (see ObjectiveName)
    theta: float = 1.0  # pdist / loop / adist: temperature of the reader-derived target distribution
    # supervised: listwise (-log sum of softmax over gold) | bce (per passage)
    supervised_loss: Literal["listwise", "bce"] = "listwise"
    cache_reader_targets: bool = True  # emdr / pdist / loop / adist: compute the reader's targets once per question
    # keep every question's passage states in memory after its first encoding (reader_cache.py): saves the
    # reader's n*L-token pass on every later visit (epochs, seeds, objectives); memory grows with the training set
    cache_passage_states: bool = False
    # with cache_passage_states: keep them on disk in this folder instead (one safetensors file per question, shared
    # by processes and runs, kept across restarts; reader_cache.py), for training sets too large for memory
    passage_state_dir: str | None = None


@dataclass
class OptimSection:
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay (per step, times lr)
    warmup_steps: int = 0  # linear warm-up
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warm-up; linear, cosine: to 0 at the end
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)


@dataclass
class TrainSection:
    max_steps: int = 1000  # optimizer steps
    micro_batch_size: int = 16  # questions per forward/backward
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    log_every_steps: int = 10  # TensorBoard scalars
    eval_every_steps: int = 0  # dev evaluation during training; 0 = only at the end
    # at every dev evaluation, keep <run_dir>/best/ by the label-free dev loss (the frozen reader's answer loss with
    # the hard top-k of the scores; needs no relevance labels)
    keep_best: bool = True
    save_every_steps: int = 0  # checkpoints step-NNNNNN/; 0 = only final/
    # a step whose loss is non-finite on any rank (or whose gradient norm is, fp16 loss-scale overflows aside) is
    # skipped, no optimizer update, and counted (train/nonfinite_steps); the run stops with an error at this many
    # consecutive skipped steps (1 = at the first)
    max_nonfinite_steps: int = 3


@dataclass
class EvalSection:
    ks: list[int] = field(default_factory=lambda: [2, 5])  # Recall/NDCG cut-offs
    reader_k: int = 0  # passages given to the reader for EM/F1; 0 = gumbel.k
    # how EM/F1 compare answers (data.normalize_answer): typographic = curly and straight quotes, dashes, NFKD
    # compatibility forms alike (default) | squad = SQuAD v1.1's official normalization, to reproduce its figures
    answer_normalization: Literal["typographic", "squad"] = "typographic"
    max_questions: int = 0  # evaluate on the first N dev questions; 0 = all
    reader_report: bool = True  # compare / suite: the reader report (reader_report.py) on the dev set, once per dataset
    batch_size: int = 32  # dev questions per evaluation forward (reranker scoring and reader EM/F1)
    # per-question score std below which scores "did not separate": evaluation's `separated`, and the recipe's
    # train/low_spread_fraction and warning
    separation_min_std: float = 0.05
    ray_tasks: int = 2  # ray_jobs/evaluate.py: the dev set is split into this many chunks, one Ray task each
    task_num_cpus: float = 1.0  # ray_jobs/evaluate.py: Ray CPUs reserved per task


@dataclass
class DemoSection:
    reader_path: str | None = None  # demo reader folder; None = the one shipped in gr_train/assets/demo_reader_topical
    # reader training recipe used when training it; None = configs/demo_reader_topical.yaml
    reader_config: str | None = None
    train_reader: bool = False  # retrain the demo reader even if reader_path exists
    # training ranks `gr-train demo` launches (DeepSpeed ZeRO-3, torchrun); each rank's micro-batch is
    # train.micro_batch_size / ranks, so the global batch is the single-process one
    ranks: int = 2
    # with reranker.conditional: also train the same recipe on the pointwise reranker (reranker.conditional=false,
    # the same initial weights; in the demo's own process) and print its row beside the conditional one
    pointwise_row: bool = True
    dashboard: bool = False  # the demo's local Ray: its dashboard on 127.0.0.1 (off by default)


@dataclass
class RetrievalSection:
    """Sharded candidate retrieval (retrieval.py; built by ray_jobs/build_index.py, served by shard actors)."""

    kind: Literal["bm25", "dense"] = "bm25"  # bm25 (bm25s tokenization, global corpus statistics) | dense (faiss IP)
    corpus_path: str | None = None  # passages: .jsonl {id, title, text} | .tsv (DPR: id, text, title) | .parquet
    index_dir: str = "runs/index"  # index.json + shard-NNNNN/ folders
    n_shards: int = 2  # disjoint contiguous corpus slices, one Ray actor each
    block_size: int = 1024  # shard boundaries are multiples of this many passages (dense: encoder batches line up)
    top_k: int = 20  # candidates retrieved per question (preprocessing keeps them all)
    bm25_k1: float = 1.5  # BM25 term-frequency saturation
    bm25_b: float = 0.75  # BM25 length normalisation
    bm25_stopwords: str = "en"  # bm25s stopword list; "" = keep every token
    encoder: str | None = None  # dense: HF encoder folder or hub id; None = the packaged all-MiniLM-L6-v2
    encoder_max_tokens: int = 256  # dense: tokens per passage or query
    encoder_batch_size: int = 64  # dense: passages per encoder forward; must divide block_size
    rescore_margin: int = 16  # dense: extra faiss candidates re-scored in float64 so shards and one index agree
    max_in_flight: int = 4  # ShardPool.stream: query batches sent and not yet merged (back-pressure on the shards)
    shard_num_cpus: float = 1.0  # Ray CPUs reserved per shard actor
    shard_memory_gb: float = 0.0  # Ray memory reserved per shard actor, GiB; 0 = no reservation
    shard_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per shard actor
    placement_strategy: str = "SPREAD"  # shard actor placement group: SPREAD | PACK | STRICT_SPREAD | STRICT_PACK
    max_restarts: int = 3  # Ray restarts a killed shard actor this often; it reloads its shard from index_dir
    max_task_retries: int = 3  # a search call interrupted by an actor death is retried this often
    shard_reload_s: float = 0.0  # s a killed shard may take to come back (restart + reload); 0 = 2x measured load + 10


@dataclass
class PreprocessSection:
    """Ray Data preprocessing (ray_jobs/preprocess.py): questions → candidates → tokens → Parquet shards."""

    questions_path: str | None = None  # FiD JSON/JSONL, HotpotQA / 2Wiki / MuSiQue JSON(L), or Parquet
    questions_format: Literal["auto", "fid", "hotpotqa", "2wiki", "musique", "parquet"] = "auto"  # auto: detected
    output_dir: str = "runs/preprocessed"  # part-*.parquet, manifest.json, rejects.jsonl
    # retrieve: top_k candidates per question from the sharded index (retrieval.*) | input: each question keeps the
    # candidates it came with (FiD records with ctxs, e.g. the demo's data; a question without any is rejected)
    candidates: Literal["retrieve", "input"] = "retrieve"
    tokenize: bool = True  # also store reranker and reader token ids (per candidate, unpadded)
    num_workers: int = 2  # Ray Data actors fetching candidates, tokenizing and writing; one file in flight each
    worker_num_cpus: float = 1.0  # Ray CPUs reserved per Ray Data task / actor
    batch_size: int = 64  # questions per tokenizer call (and per query batch to the shard actors) in a worker
    rows_per_file: int = 5000  # questions per output Parquet file (at most; fewer so each worker gets ~4 files)


@dataclass
class SuiteSection:
    """Several datasets, one objective comparison each (suite.py, `gr-train suite`)."""

    # name -> {train: FILE, dev: FILE, format: auto | hotpotqa | 2wiki | musique | fid, overrides: [section.key=v],
    # dev_for_train: N (the last N dev questions move to the training set)} or {synthetic: {generator key: value},
    # overrides: [...]} (data written by the embedded generator)
    datasets: dict[str, Any] = field(default_factory=dict)
    # run only these datasets (names of suite.datasets); [] = all. Lets a long study run a part per process into
    # the same --out folder; results.md / suite.json / suite.png then cover the datasets run
    only: list[str] = field(default_factory=list)
    max_train: int = 0  # the first N training questions of each dataset; 0 = all
    max_dev: int = 0  # the first N dev questions of each dataset; 0 = all
    objectives: list[str] = field(default_factory=lambda: ["gumbel"])  # rows: objective names or LABEL=OBJECTIVE
    row_overrides: dict[str, Any] = field(default_factory=dict)  # row label -> [section.key=value, ...]
    seeds: list[int] = field(default_factory=lambda: [0])  # run.seed values; every row is trained once per seed
    models_dir: str | None = None  # run prepare-models into this folder first (the packaged MiniLM / SmolLM2)
    # Reader fine-tuning before the comparisons: overrides of one run (objective.name=reader ...) on every dataset's
    # training questions together; its final/reader then reads for every row. [] = the configured reader as is
    reader_tuning: list[str] = field(default_factory=list)


@dataclass
class RuntimeSection:
    """The training engine (runtime.py): single process, or DeepSpeed ZeRO-3 over ranks; Ray Train's scaling."""

    engine: Literal["local", "deepspeed"] = "local"  # local: one process; deepspeed: ZeRO-3 (torchrun, deepspeed, Ray)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # DeepSpeed mixed precision (bf16, fp16); fp32 on CPU
    partition_reader: bool = True  # build the frozen reader under zero.Init: no rank ever holds all of it
    reader_checkpointing: bool = False  # recompute the reader's answer-pass layer activations in backward
    param_persistence_threshold: int = 0  # ZeRO-3 keeps parameters under this many elements whole on every rank
    dist_backend: str = ""  # torch.distributed backend; "" = nccl with CUDA, else gloo
    # CPU: let DeepSpeed build its shared-memory all-reduce op at start (a C++ compile, 30-80 s the first time on a
    # machine). Only DeepSpeed's inference all-reduce uses it, never ZeRO training, so it is off: not built.
    shm_allreduce_op: bool = False
    ds_overrides: dict[str, Any] = field(default_factory=dict)  # merged last into the generated DeepSpeed config
    num_workers: int = 2  # Ray Train: worker processes (ranks), ScalingConfig.num_workers
    use_gpu: bool = False  # Ray Train: one GPU per worker
    cpus_per_worker: float = 1.0  # Ray Train: CPUs reserved per worker
    # Ray Train: how the workers' placement group places them (ScalingConfig.placement_strategy): PACK fills a node
    # first, SPREAD puts them on different nodes where it can (soft: after a node is lost they may share one)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Ray Train: restarts of the worker group after a worker or its node dies (FailureConfig.max_failures; -1: no
    # limit); a restarted group resumes from the job's last checkpoint in run.run_dir. 0: the job fails with Ray's
    # error, and the same command run again resumes
    max_failures: int = 0


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    data: DataSection = field(default_factory=DataSection)
    reader: ReaderSection = field(default_factory=ReaderSection)
    reranker: RerankerSection = field(default_factory=RerankerSection)
    gumbel: GumbelSection = field(default_factory=GumbelSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    demo: DemoSection = field(default_factory=DemoSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    preprocess: PreprocessSection = field(default_factory=PreprocessSection)
    suite: SuiteSection = field(default_factory=SuiteSection)

    def global_batch(self, world_size: int) -> int:
        """Questions per optimizer step over all ranks: micro_batch_size * grad_accum_steps * world_size."""
        return self.train.micro_batch_size * self.train.grad_accum_steps * world_size

    def reader_k(self) -> int:
        """Passages the reader is given at evaluation (the reranker's hard top-k): eval.reader_k, else gumbel.k."""
        return self.eval.reader_k or self.gumbel.k

    def selection_depth(self) -> int:
        """Passages a conditional reranker (reranker.conditional) selects one at a time at evaluation: the largest of
        eval.ks and the reader's k (selection.ranking_scores ranks the rest by the last step's scores)."""
        return max([*self.eval.ks, self.reader_k()])


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` coerced to annotation `tp` (int → float only), or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ConfigError(f"{where}: unknown {value!r} ({' | '.join(map(str, allowed))})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {tp}, got {type(value).__name__} {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any text that is a plain float literal.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _apply(cfg: RunConfig, data: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    sections = _section_types(RunConfig)
    for sec_name, values in data.items():
        if sec_name not in sections:
            raise ConfigError(f"{source}: unknown section '{sec_name}' (known: {', '.join(sections)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{sec_name}' must be a mapping")
        section = getattr(cfg, sec_name)
        hints = _section_types(type(section))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{sec_name}.{key}' (known: {', '.join(hints)})")
            setattr(section, key, _check_type(value, hints[key], f"{source}: {sec_name}.{key}"))


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, YAML-parsed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}': expected section.key=value")
    path, raw = text.split("=", 1)
    section, key = path.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from None
    return section, key, value


def apply_override(cfg: RunConfig, text: str, source: str | None = None) -> tuple[str, str]:
    """Apply one `section.key=value` to cfg in place (type-checked; call validate() after the last one).
    Returns (section, key). `source` names the override in errors (default: the text itself)."""
    section, key, value = parse_override(text)
    _apply(cfg, {section: {key: value}}, source or f"override '{text}'")
    return section, key


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← overrides. Raises ConfigError naming the file/override and key."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file: give a YAML file, e.g. --config "
                              "configs/demo.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found (the shipped ones are in configs/)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config file: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        _apply(cfg, data, str(path))
    for text in overrides or []:
        apply_override(cfg, text)
    validate(cfg)
    return cfg


def _check_literals(cfg: RunConfig) -> None:
    """Every Literal-typed key holds one of its allowed values, also when code set it directly (not via _apply)."""
    for sec_name, section_cls in _section_types(RunConfig).items():
        for key, tp in _section_types(section_cls).items():
            if Literal in (typing.get_origin(tp), *map(typing.get_origin, typing.get_args(tp))):
                _check_type(getattr(getattr(cfg, sec_name), key), tp, f"{sec_name}.{key}")


def validate(cfg: RunConfig) -> None:
    """Allowed values of the Literal-typed keys, and cross-field checks that types alone cannot express."""
    _check_literals(cfg)
    if cfg.run.device != "cpu":
        import torch

        try:
            torch.device(cfg.run.device)
        except RuntimeError as e:
            raise ConfigError(f"run.device: {cfg.run.device!r} is not a torch device ({e})") from None
    g = cfg.gumbel
    if g.k < 1:
        raise ConfigError(f"gumbel.k: must be >= 1, got {g.k}")
    for i, item in enumerate(g.k_curriculum):
        if len(item) != 2 or item[0] < 0 or item[1] < 1:
            raise ConfigError(f"gumbel.k_curriculum[{i}]: expected [steps >= 0, k >= 1], got {item}")
    if g.tau <= 0 or (g.tau_end is not None and g.tau_end <= 0):
        raise ConfigError("gumbel.tau / gumbel.tau_end: must be > 0")
    if g.samples < 0:
        raise ConfigError(f"gumbel.samples: must be >= 1, or 0 for the estimator's own, got {g.samples}")
    if g.estimator == "score_function" and (g.sample_count() < 2 or not g.noise):
        raise ConfigError(f"gumbel.estimator=score_function: needs gumbel.samples >= 2 (each sample's baseline is the "
                          f"others' mean loss; 0 = 4) and gumbel.noise=true (it samples); got samples={g.samples}, "
                          f"noise={g.noise}")
    rr = cfg.reranker
    if g.kl_coef < 0:
        raise ConfigError(f"gumbel.kl_coef: must be >= 0 (0 = off), got {g.kl_coef}")
    if g.kl_reference not in ("conditional", "pointwise"):
        raise ConfigError(f"gumbel.kl_reference: conditional or pointwise, got {g.kl_reference!r}")
    if g.kl_coef > 0 and cfg.objective.name == "gumbel" and not (rr.conditional or g.estimator == "score_function"):
        raise ConfigError(f"gumbel.kl_coef: the KL penalty is of the sequential path's step policies: set "
                          f"gumbel.estimator=score_function or reranker.conditional=true (estimator {g.estimator}, "
                          f"pointwise), or gumbel.kl_coef=0")
    if rr.conditional and g.estimator in ("max_softmax", "subset") and cfg.objective.name == "gumbel":
        raise ConfigError(f"reranker.conditional: G-Rerank trains a conditional reranker with a sequential estimator "
                          f"(gumbel.estimator=straight_through or score_function), got {g.estimator}: its relaxation "
                          "is of one score vector, and a conditional reranker has one per step")
    if rr.conditional_max_tokens < 0 or (rr.conditional and rr.condition_tokens() < rr.max_tokens):
        raise ConfigError(f"reranker.conditional_max_tokens: must be 0 (= 2 * reranker.max_tokens) or >= "
                          f"reranker.max_tokens ({rr.max_tokens}), got {rr.conditional_max_tokens}")
    if rr.lora_rank < 0:
        raise ConfigError(f"reranker.lora_rank: must be >= 0 (0 = off), got {rr.lora_rank}")
    if rr.lora_rank and cfg.runtime.engine == "deepspeed":
        raise ConfigError("reranker.lora_rank: LoRA runs on runtime.engine=local (under ZeRO-3 train the full "
                          "reranker, reranker.lora_rank=0)")
    rd = cfg.reader
    if rd.prompt != "plain" and rd.kind != "causal_lm":
        raise ConfigError(f"reader.prompt: {rd.prompt} is for reader.kind=causal_lm (got {rd.kind}); use plain")
    if rd.train_layers < 0 or rd.lora_rank < 0:
        raise ConfigError("reader.train_layers / reader.lora_rank: must be >= 0 (0 = off)")
    if (rd.train_layers or rd.lora_rank) and rd.kind == "demo_fid":
        raise ConfigError("reader.train_layers / reader.lora_rank: for HF readers (fid_t5, causal_lm), not demo_fid")
    if rd.train_layers and rd.lora_rank:
        raise ConfigError("reader.train_layers and reader.lora_rank: choose one (top layers or LoRA)")
    if rd.init_from and rd.kind != "demo_fid":
        raise ConfigError(f"reader.init_from: for reader.kind=demo_fid built from model_config (got {rd.kind}); an "
                          "HF reader starts from reader.name_or_path")
    if rd.init_from and not rd.name_or_path and cfg.runtime.engine == "deepspeed" and cfg.runtime.partition_reader:
        raise ConfigError("reader.init_from: not built for a reader partitioned as it is created (runtime.engine="
                          "deepspeed with runtime.partition_reader=true, ZeRO-3): copying the source's weights into "
                          "partitioned parameters needs a gather. Train the initialised reader on runtime.engine=local "
                          "and point reader.name_or_path at its final/reader folder, or set "
                          "runtime.partition_reader=false")
    if not 0.0 <= rd.passage_dropout < 1.0:
        raise ConfigError(f"reader.passage_dropout: must be in [0, 1), got {rd.passage_dropout}")
    if rd.passage_dropout and (cfg.objective.name != "reader" or rd.kind == "demo_fid"):
        raise ConfigError("reader.passage_dropout: for HF reader fine-tuning (objective.name=reader with reader.kind "
                          f"fid_t5 or causal_lm), got objective.name={cfg.objective.name}, reader.kind={rd.kind}")
    if rd.lora_rank and cfg.runtime.engine == "deepspeed":
        raise ConfigError("reader.lora_rank: LoRA runs on runtime.engine=local (under ZeRO-3 use reader.train_layers)")
    if (cfg.objective.name in ATTENTION_OBJECTIVES and rd.kind != "demo_fid"
            and rd.attn_implementation not in ATTENTION_BACKENDS):
        raise ConfigError(f"objective.name={cfg.objective.name} with reader.attn_implementation="
                          f"{rd.attn_implementation}: {cfg.objective.name} reads the reader's attention probabilities, "
                          f"which only {' / '.join(ATTENTION_BACKENDS)} return (sdpa and flash attention never form "
                          f"them); set reader.attn_implementation=eager")
    if cfg.objective.theta <= 0:
        raise ConfigError(f"objective.theta: must be > 0, got {cfg.objective.theta}")
    if cfg.objective.cache_passage_states and cfg.reader.trainable:
        raise ConfigError("objective.cache_passage_states: the reader is trainable (reader.trainable=true), so its "
                          "passage states change every step; set objective.cache_passage_states=false")
    if cfg.objective.passage_state_dir and not cfg.objective.cache_passage_states:
        raise ConfigError(f"objective.passage_state_dir={cfg.objective.passage_state_dir}: needs "
                          "objective.cache_passage_states=true (it says where the cached states live)")
    if cfg.runtime.precision != "fp32" and cfg.runtime.engine != "deepspeed":
        raise ConfigError("runtime.precision: bf16/fp16 need runtime.engine=deepspeed (the local engine is fp32)")
    if cfg.reader.dtype is not None and cfg.runtime.engine == "deepspeed" and cfg.reader.dtype != cfg.runtime.precision:
        raise ConfigError(f"reader.dtype: {cfg.reader.dtype} differs from runtime.precision={cfg.runtime.precision} "
                          "(the DeepSpeed engine casts the reader to runtime.precision; set both alike)")
    if cfg.reader.trainable and (cfg.reader.dtype or "fp32") != "fp32" and cfg.runtime.engine == "local":
        raise ConfigError(f"reader.dtype: a trainable reader in {cfg.reader.dtype} needs runtime.engine=deepspeed "
                          "(the local engine trains fp32 weights)")
    if min(cfg.reader.passage_max_tokens, cfg.reader.answer_max_tokens) < 1 or cfg.reader.prompt_max_tokens < 0:
        raise ConfigError("reader.passage_max_tokens / answer_max_tokens: must be >= 1; reader.prompt_max_tokens: "
                          "must be >= 0")
    if cfg.train.max_nonfinite_steps < 1:
        raise ConfigError(f"train.max_nonfinite_steps: must be >= 1, got {cfg.train.max_nonfinite_steps}")
    if cfg.data.n_candidates < 1:
        raise ConfigError("data.n_candidates: must be >= 1")
    if cfg.runtime.max_failures < -1:
        raise ConfigError(f"runtime.max_failures: must be >= 0, or -1 for no limit, got {cfg.runtime.max_failures}")
    if not 0.0 <= cfg.data.max_no_answer_fraction <= 1.0:
        raise ConfigError(f"data.max_no_answer_fraction: must be in [0, 1], got {cfg.data.max_no_answer_fraction}")
    r = cfg.retrieval
    if r.n_shards < 1 or r.block_size < 1 or r.top_k < 1 or r.max_in_flight < 1:
        raise ConfigError("retrieval.n_shards / block_size / top_k / max_in_flight: must be >= 1")
    if r.shard_reload_s < 0:
        raise ConfigError(f"retrieval.shard_reload_s: must be >= 0 seconds, got {r.shard_reload_s}")
    if r.kind == "dense" and r.block_size % r.encoder_batch_size:
        raise ConfigError(f"retrieval.encoder_batch_size: must divide retrieval.block_size ({r.block_size})")
    syn = cfg.synthetic
    if syn.n_chains < 1 or syn.gold_copies < 1 or syn.answer_distractors < 0 or syn.bridge_distractors < 0:
        raise ConfigError("synthetic.n_chains / gold_copies: must be >= 1; synthetic.answer_distractors / "
                          "bridge_distractors: must be >= 0")
    if syn.topical_distractors < 0:
        raise ConfigError(f"synthetic.topical_distractors: must be >= 0, got {syn.topical_distractors}")
    if not 0.0 <= syn.shortcut_fraction <= 1.0:
        raise ConfigError(f"synthetic.shortcut_fraction: must be in [0, 1], got {syn.shortcut_fraction}")
    if not 0.0 <= syn.three_hop_fraction <= 1.0:
        raise ConfigError(f"synthetic.three_hop_fraction: must be in [0, 1], got {syn.three_hop_fraction}")
    for i, item in enumerate(cfg.synthetic.curriculum):
        if len(item) != 2 or item[0] < 0 or item[1] < 1:
            raise ConfigError(f"synthetic.curriculum[{i}]: expected [steps >= 0, n_chains >= 1], got {item}")


# ---------------------------------------------------------------------------------------------------------------
# Every key with its type, default and doc (`gr-train config`), read from this file's source
# ---------------------------------------------------------------------------------------------------------------


def field_docs(section_cls: type) -> dict[str, str]:
    """{key: doc} of one section dataclass, from its source: the comment lines directly above a field, then the
    comment on its own line(s), joined into one line ("" for a field with neither). Read with ast and tokenize, so
    the docs are the comments beside the fields and never a copy of them."""
    source = textwrap.dedent(inspect.getsource(section_cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        docs[node.target.id] = " ".join(above + beside)
    return docs


def type_name(tp: Any) -> str:
    """An annotation as a user writes the value: Literal["a", "b"] → "a | b", Optional[int] → "int | None"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def describe_keys(sections: list[str] | None = None) -> dict[str, dict]:
    """Every config key of the named sections (default: all, in RunConfig's order).

    Returns:
        {section: {"doc": the section's docstring ("" if none), "keys": {key: {"type": str (type_name),
        "default": the default value (JSON-able), "doc": str (field_docs)}}}}.
    Raises:
        ConfigError naming the unknown section and the valid ones.
    """
    all_sections = _section_types(RunConfig)
    unknown = [s for s in sections or [] if s not in all_sections]
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' (sections: {', '.join(all_sections)})")
    out = {}
    for name in sections or all_sections:
        cls = all_sections[name]
        hints, docs, default = _section_types(cls), field_docs(cls), cls()
        own_doc = cls.__doc__ if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        out[name] = {"doc": " ".join(own_doc.split()), "keys": {
            f.name: {"type": type_name(hints[f.name]), "default": getattr(default, f.name), "doc": docs[f.name]}
            for f in dataclasses.fields(cls)}}
    return out


def format_keys(described: dict[str, dict], width: int = 100) -> str:
    """describe_keys as plain text: per section a header, then `section.key: type = default` and its doc, indented."""
    blocks = []
    for name, section in described.items():
        lines = [f"{name}:" + (f" {section['doc']}" if section["doc"] else "")]
        for key, k in section["keys"].items():
            lines.append(f"  {name}.{key}: {k['type']} = {json.dumps(k['default'])}")
            lines += textwrap.wrap(k["doc"], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every key, defaults included) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
