"""Checks run before any model is built: the mistakes a user makes with the command line, each reported as one
line that names the key, file or value and the fix.

Two stages, called by cli.py (and by compare.run_compare for `compare` and `suite`):
- `check_config(cfg, command)`: the config alone, without importing torch: a frozen reader with no weights,
  model paths that do not exist or name a run folder, missing data paths.
- `check_data(cfg, splits)`: the data against the config: candidate counts against gumbel.k / eval.ks /
  eval.reader_k / data.n_candidates, the training questions without an answer-bearing candidate
  (data.max_no_answer_fraction, data.drop_no_answer), gold labels for evaluation, and a sample of the data through
  the reader's and the reranker's tokenizers (share of unknown tokens, the demo reader's decoder length) before any
  model runs.

`USER_ERRORS` are the exceptions cli.main turns into one `gr-train: error: ...` line (exit code 2, no traceback).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from gr_train.config import ConfigError, RunConfig
from gr_train.data import DataError, Record, has_answer, passage_string

log = logging.getLogger("gr_train.checks")


class UserError(ValueError):
    """A command-line mistake that is neither a config key nor a data record (an output path, a run folder that
    already holds a run, an eval file of another reranker). The message names the fix."""


# The user mistakes cli.main reports as one line; anything else is a bug and keeps its traceback. export and
# prepare-models raise FileNotFoundError (subclasses) naming a missing folder or package.
USER_ERRORS = (ConfigError, DataError, UserError, FileNotFoundError)

# Questions read from each file by the tokenizer check (the first ones: enough to tell a vocabulary that does
# not fit, cheap next to model loading).
SAMPLE_QUESTIONS = 32
# The tokenizer check refuses data when more than this share of its tokens are the unknown token.
MAX_UNK_SHARE = 0.2
# A hub id: "name" or "org/name" (letters, digits, '-', '_', '.'); anything else can only be a local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# First path components that make a model path local, never a hub id: the folders prepare-models and train write.
LOCAL_ROOTS = ("models", "runs")
FIT_HINT = ("configs/demo.yaml fits the embedded demo data (gr-train generate); for real text (HotpotQA, 2Wiki, "
            "MuSiQue) use configs/real.yaml")


def one_line(error: BaseException) -> str:
    """The error's message on one line (YAML and tokenizer messages carry newlines)."""
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------------------------------------
# The config alone (no torch)
# ---------------------------------------------------------------------------------------------------------------


def check_config(cfg: RunConfig, command: str, reader_used: bool = True) -> None:
    """The config-level checks of `command` (train | evaluate | compare | suite); reader_used False (evaluate
    --no-reader) skips the reader-weights check. Raises ConfigError."""
    if command == "train" and cfg.data.train_path is None and cfg.objective.name != "reader":
        raise ConfigError(f"data.train_path: not set; objective.name={cfg.objective.name} trains on a file: add "
                          "data.train_path=FILE (FiD JSON/JSONL, HotpotQA / 2Wiki / MuSiQue, or a Parquet folder; "
                          "`gr-train generate --out-dir runs/data` writes the demo's runs/data/train.jsonl)")
    if command == "evaluate" and not cfg.data.dev_path:
        raise ConfigError("data.dev_path: not set; add data.dev_path=FILE (FiD JSON/JSONL with is_gold labels, or "
                          "a HotpotQA / 2Wiki / MuSiQue file)")
    for key in ("data.train_path", "data.dev_path"):
        path = getattr(cfg.data, key.split(".")[1])
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{key}={path}: no such file (relative paths start at the working directory "
                              f"{Path.cwd()})")
    if reader_used:
        check_reader_weights(cfg)
    if command != "suite":  # suite writes its models first (suite.models_dir); run_compare checks them then
        check_model_paths(cfg)


def check_reader_weights(cfg: RunConfig) -> None:
    """A frozen reader must load weights (reader.name_or_path) unless reader.random_init says random ones are
    meant. Reader pre-training (objective.name=reader) starts from random weights by design."""
    if cfg.objective.name == "reader" or cfg.reader.name_or_path or cfg.reader.random_init:
        return
    raise ConfigError("reader.name_or_path: not set, so the frozen reader would have random weights and its answers "
                      "and loss would mean nothing: name its weights, e.g. reader.name_or_path=gr_train/assets/"
                      "demo_reader (configs/demo.yaml) or models/smollm2-135m (configs/real.yaml), or set "
                      "reader.random_init=true to use a random reader on purpose")


def check_model_paths(cfg: RunConfig) -> None:
    """reader / reranker name_or_path and tokenizer_path: an existing model folder, or a hub id (offline: one in
    the local hub cache). A run or checkpoint folder given for a model is named with the folder to give instead."""
    check_model_path("reader.name_or_path", cfg.reader.name_or_path, "reader")
    check_model_path("reader.tokenizer_path", cfg.reader.tokenizer_path, None)
    check_model_path("reranker.name_or_path", cfg.reranker.name_or_path, "reranker")
    check_model_path("reranker.tokenizer_path", cfg.reranker.tokenizer_path, None)


def check_model_path(key: str, value: str | None, what: str | None) -> None:
    """One model (what: reader | reranker) or tokenizer (what: None) location. Raises ConfigError."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        if what is None or (path / "config.json").is_file():
            return
        for sub in (Path("final") / what, Path("best") / what, Path(what)):
            if (path / sub / "config.json").is_file():
                kind = "a checkpoint folder" if len(sub.parts) == 1 else "a run folder"
                alt = f" (or {path / 'best' / what}: the lowest label-free dev loss)" if sub.parts[0] == "final" \
                    and (path / "best" / what).is_dir() else ""
                raise ConfigError(f"{key}={value} is {kind}, not a {what} folder: give {key}={path / sub}{alt}")
        if (path / "config.yaml").is_file():
            raise ConfigError(f"{key}={value} is a run folder with no {what} yet: final/{what} is written when the "
                              "run finishes (`gr-train train` with the same run.run_dir resumes it)")
        raise ConfigError(f"{key}={value}: no model in this folder (no config.json): give a folder written by "
                          "save_pretrained or by gr-train (e.g. <run_dir>/final/reranker)")
    if path.exists():
        raise ConfigError(f"{key}={value} is a file: give the model's folder")
    # "org/name" is a hub id unless org is a local folder or one of the folders gr-train writes (models/, runs/)
    first = value.split("/")[0]
    hub = bool(HUB_ID.match(value)) and first not in LOCAL_ROOTS and not ("/" in value and Path(first).is_dir())
    if hub and not _offline():
        return  # downloaded by transformers
    if hub and _in_hub_cache(value):
        return
    hint = ""
    repo = Path(__file__).resolve().parent.parent
    if not path.is_absolute() and (repo / path).exists():
        hint = f"; it is there relative to the repository root: run from {repo} (the configs' paths start there)"
    elif value.startswith("models/"):
        hint = "; `gr-train prepare-models` writes models/all-minilm-l6-v2 and models/smollm2-135m"
    elif what is not None:
        hint = f"; a trained {what} is in <run_dir>/final/{what}"
    raise ConfigError(f"{key}={value}: no such folder (relative paths start at the working directory {Path.cwd()})"
                      + (" and not in the local hub cache (offline)" if hub else "") + hint)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE",
                                                                                     "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str)
               for name in ("config.json", "tokenizer_config.json"))


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, main_rank: bool = True) -> None:
    """`train` into a folder that already holds a run: refused (UserError) when training would start again at step
    0 (no step-NNNNNN/ checkpoint to resume, or --no-resume) and append a second set of curves to tb/; with
    overwrite, the run's checkpoints, best/, final/, tb/ and config.yaml are deleted first (the caller must then not
    resume). Under a launcher only the main rank checks: the others may start after it began writing the run (its
    refusal ends the launch)."""
    if not main_rank:
        return
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.run_dir={run_dir} is a file: give a folder")
    steps = sorted(run_dir.glob("step-[0-9]*")) if run_dir.is_dir() else []
    owned = [run_dir / name for name in ("final", "best", "tb", "config.yaml", "ds_config.json")] + steps
    present = [p for p in owned if p.exists()]
    if not present or (resume and steps):
        return
    if not overwrite:
        why = "--no-resume was given" if steps else "it has no step-NNNNNN/ checkpoint to resume from"
        raise UserError(f"run.run_dir={run_dir} already holds a run ({', '.join(p.name for p in present[:4])}) and "
                        f"{why}: training would start again at step 0 and add a second set of curves to its tb/. "
                        "Give another run.run_dir, or add --overwrite to delete that run first")
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    log.info("--overwrite: deleted %s", ", ".join(str(p) for p in present))


def check_output_dir(path: str | Path, what: str) -> None:
    """An output folder path: not an existing file. Raises UserError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file: give a folder (it is created if missing)")


def check_output_file(path: str | Path, suffixes: tuple[str, ...], what: str) -> None:
    """An output file path: not a folder, and one of `suffixes`. Raises UserError."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise UserError(f"{what} {path} is a folder: give a file name, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix not in suffixes:
        raise UserError(f"{what} {path}: unknown extension '{path.suffix}': give a file ending in "
                        f"{' or '.join(suffixes)}")


CORPUS_SUFFIXES = (".jsonl", ".tsv", ".parquet")  # retrieval.read_corpus


def check_corpus(cfg: RunConfig) -> None:
    """`gr-train index`: retrieval.corpus_path is set and names a .jsonl / .tsv / .parquet file. Raises ConfigError."""
    path = cfg.retrieval.corpus_path
    if not path:
        raise ConfigError("retrieval.corpus_path: not set; add retrieval.corpus_path=FILE (passages: .jsonl, one "
                          "{id, title, text} a line; DPR .tsv with the header id, text, title; or .parquet with "
                          "columns id, text and optionally title)")
    if not Path(path).is_file():
        raise ConfigError(f"retrieval.corpus_path={path}: no such file (relative paths start at the working "
                          f"directory {Path.cwd()})")
    if Path(path).suffix not in CORPUS_SUFFIXES:
        raise ConfigError(f"retrieval.corpus_path={path}: unknown extension '{Path(path).suffix}': give a corpus "
                          f"ending in {' | '.join(CORPUS_SUFFIXES)}")


def check_retrieve(cfg: RunConfig, questions: str, out: str) -> None:
    """`gr-train retrieve`: an index in retrieval.index_dir (ConfigError naming `gr-train index`), an existing
    --questions file, and an --out file ending in .jsonl that is not the questions file (UserError)."""
    index_dir = cfg.retrieval.index_dir
    if not (Path(index_dir) / "index.json").is_file():
        raise ConfigError(f"retrieval.index_dir={index_dir}: no index there (no index.json): build it first "
                          "(gr-train index --config FILE retrieval.corpus_path=CORPUS "
                          f"retrieval.index_dir={index_dir}), or give the folder of one")
    if not Path(questions).is_file():
        raise UserError(f"--questions {questions}: no such file (relative paths start at the working directory "
                        f"{Path.cwd()})")
    check_output_file(out, (".jsonl",), "--out")
    if Path(out).resolve() == Path(questions).resolve():
        raise UserError(f"--out {out} is the --questions file: give another name (the output would replace it)")


# ---------------------------------------------------------------------------------------------------------------
# The data against the config
# ---------------------------------------------------------------------------------------------------------------


def question_counts(records: list[Record], n: int) -> dict[str, int]:
    """Questions of `records` as the evaluation sees them with their first n candidates:
    {"questions", "direct", "indirect", "yes_no" (questions with at least one passage of the kind among the first
    n; yes/no questions have no direct or indirect passages), "with_gold" (a gold passage among the first n),
    "no_gold" (no gold passage at all), "lost_gold" (gold passages, all beyond the first n), "all_gold" (every one
    of the first n candidates is gold: any ranking of them scores the same)}.
    Unlabelled passages (is_gold None) count as not gold."""
    counts = dict.fromkeys(("questions", "direct", "indirect", "yes_no", "with_gold", "no_gold", "lost_gold",
                            "all_gold"), 0)
    for r in records:
        kept = r.ctxs[:n]
        counts["questions"] += 1
        counts["yes_no"] += r.yes_no
        if not r.yes_no:
            counts["direct"] += any(p.direct for p in kept)
            counts["indirect"] += any(p.indirect for p in kept)
        gold = any(p.is_gold for p in r.ctxs)
        counts["with_gold"] += any(p.is_gold for p in kept)
        counts["no_gold"] += not gold
        counts["lost_gold"] += gold and not any(p.is_gold for p in kept)
        counts["all_gold"] += bool(kept) and all(p.is_gold is True for p in kept)
    return counts


def format_counts(counts: dict[str, int], n: int) -> str:
    """One line for under a table: the question counts of question_counts."""
    line = (f"{counts['questions']} questions: {counts['direct']} with a direct and {counts['indirect']} with an "
            f"indirect gold passage, {counts['yes_no']} yes/no")
    if counts.get("lost_gold"):
        line += (f"; {counts['lost_gold']} lost every gold passage to the cut at data.n_candidates={n} (recall is "
                 f"over the {counts['with_gold']} that keep one)")
    if counts.get("no_gold"):
        line += f"; {counts['no_gold']} have no gold passage"
    if counts.get("all_gold"):
        line += (f"; {counts['all_gold']} have only gold candidates (any ranking scores the same on them; they are "
                 "included in the means)")
    return line


def answerless(record: Record, n: int) -> bool:
    """No answer-bearing candidate (has_answer, computed by data.has_answer where unset) among the first n; False
    for a yes/no question (answer presence is undefined for it)."""
    if record.yes_no:
        return False
    return not any(p.has_answer if p.has_answer is not None
                   else has_answer(passage_string(p.title, p.text), record.answers) for p in record.ctxs[:n])


def candidate_quality(records: list[Record], n: int) -> dict[str, int]:
    """How many questions of `records` the reader can be rewarded on with their first n candidates:
    {"questions", "yes_no", "no_answer" (answerless: no answer-bearing candidate among the first n; yes/no questions
    never count), "labelled" (some passage has an is_gold label), "no_gold" (labelled, no gold passage among the
    first n)}."""
    counts = dict.fromkeys(("questions", "yes_no", "no_answer", "labelled", "no_gold"), 0)
    for r in records:
        counts["questions"] += 1
        counts["yes_no"] += r.yes_no
        counts["no_answer"] += answerless(r, n)
        if any(p.is_gold is not None for p in r.ctxs):
            counts["labelled"] += 1
            counts["no_gold"] += not any(p.is_gold for p in r.ctxs[:n])
    return counts


def format_quality(counts: dict[str, int], n: int) -> str:
    """One line: the counts of candidate_quality."""
    line = (f"{counts['no_answer']} of {counts['questions'] - counts['yes_no']} questions (yes/no aside) have no "
            f"answer-bearing candidate among their first {n}")
    if counts["labelled"]:
        line += f"; {counts['no_gold']} of {counts['labelled']} labelled questions have no gold passage among them"
    return line


NO_ANSWER_FIX = ("more candidates per question (data.n_candidates, retrieval.top_k when retrieving), another "
                 "retriever (retrieval.kind=dense or bm25), or data.drop_no_answer=true to train without them")


def no_answer_warning(counts: dict[str, int], n: int, max_fraction: float) -> str | None:
    """The warning, with its fix (NO_ANSWER_FIX), when the share of answerless questions among the non-yes/no ones
    (candidate_quality's counts with the first n candidates) is above max_fraction (data.max_no_answer_fraction);
    None when it is not."""
    spanned = counts["questions"] - counts["yes_no"]
    share = counts["no_answer"] / spanned if spanned else 0.0
    if share <= max_fraction:
        return None
    return (f"{100 * share:.0f}% of the questions ({counts['no_answer']} of {spanned}, yes/no aside) have no "
            f"answer-bearing candidate among their first {n}, above data.max_no_answer_fraction={max_fraction:g}: "
            f"their candidates miss the answer. Fix: {NO_ANSWER_FIX}")


def check_answer_candidates(cfg: RunConfig, path: str, records: list[Record]) -> dict[str, int]:
    """The training questions with no answer-bearing candidate among the first data.n_candidates (and with no gold
    passage, when labelled): one log line with the counts, a warning naming the fix when their share of the
    non-yes/no questions is above data.max_no_answer_fraction. Returns candidate_quality's counts. Raises
    ConfigError when data.drop_no_answer would leave no question to train on."""
    n = cfg.data.n_candidates
    counts = candidate_quality(records, n)
    fate = "dropped from training (data.drop_no_answer=true)" if cfg.data.drop_no_answer else \
        "kept (data.drop_no_answer=false): the reader's loss gives them nothing to reward"
    log.info("train %s: %s (data.n_candidates=%d); those without an answer-bearing one are %s", path,
             format_quality(counts, n), n, fate)
    warning = no_answer_warning(counts, n, cfg.data.max_no_answer_fraction)
    if warning:
        log.warning("train %s: %s", path, warning)
    if cfg.data.drop_no_answer and counts["no_answer"] == counts["questions"]:
        raise ConfigError(f"data.drop_no_answer=true: every question of {path} ({counts['questions']}) has no "
                          f"answer-bearing candidate among its first {n}, so none would be left to train on: retrieve "
                          "more candidates (data.n_candidates, retrieval.top_k) or with another retriever "
                          "(retrieval.kind)")
    return counts


def drop_no_answer(cfg: RunConfig, path: str, records: list[Record]) -> list[Record]:
    """`records` without the answerless ones (among the first data.n_candidates) when data.drop_no_answer, logging
    how many were dropped and the first ids; `records` unchanged otherwise. Raises ConfigError when none is left."""
    if not cfg.data.drop_no_answer:
        return records
    n = cfg.data.n_candidates
    dropped = [r.id for r in records if answerless(r, n)]
    kept = [r for r in records if not answerless(r, n)]
    if not kept:
        raise ConfigError(f"data.drop_no_answer=true: every question of {path} ({len(records)}) has no "
                          f"answer-bearing candidate among its first {n}, so none would be left to train on")
    if dropped:
        log.warning("train %s: dropped %d of %d questions with no answer-bearing candidate among their first %d "
                    "(data.drop_no_answer=true): %s%s", path, len(dropped), len(records), n, ", ".join(dropped[:5]),
                    ", ..." if len(dropped) > 5 else "")
    return kept


def check_data(cfg: RunConfig, splits: dict[str, tuple[str, list[Record]]], labelled: tuple[str, ...] = (),
               reader_used: bool = True, labels_required: bool = True) -> None:
    """The data against the config, before any model is built.

    Args:
        splits: {split name: (path, records)}, e.g. {"train": (cfg.data.train_path, records)}.
        labelled: the splits that need is_gold on every passage (ranking metrics).
        reader_used: False (evaluate --no-reader): only the reranker's tokenizer is checked.
        labels_required: False (evaluate): a `labelled` split may also have no label at all (label-free metrics),
            but not labels on some passages only.
    Raises ConfigError for k, eval.ks, eval.reader_k or data.n_candidates above the candidate count of the data;
    DataError for a missing is_gold label or data the tokenizers cannot read (with the config that fits). Questions
    with fewer candidates than gumbel.k / eval.reader_k are logged (check_candidate_counts).
    """
    if not splits:
        return
    for name, (path, records) in splits.items():
        if name in labelled and (labels_required or any(p.is_gold is not None for r in records for p in r.ctxs)):
            check_labels(path, records)
        check_candidates(cfg, path, records)
        if name == "train":
            check_answer_candidates(cfg, path, records)
    check_tokenizers(cfg, splits, reader_used)
    for path, records in splits.values():
        check_candidate_counts(cfg, path, records)


def check_labels(path: str, records: list[Record]) -> None:
    """Every passage has an is_gold label (evaluation's ranking metrics). Raises DataError naming the first gap."""
    for r in records:
        for i, p in enumerate(r.ctxs):
            if p.is_gold is None:
                raise DataError(path, "no is_gold label: evaluation needs gold labels on every passage (ranking "
                                "metrics); the HotpotQA / 2Wiki / MuSiQue converters set them (gr-train convert)",
                                record_id=r.id, field=f"ctxs[{i}].is_gold")


def check_candidates(cfg: RunConfig, path: str, records: list[Record]) -> None:
    """data.n_candidates, gumbel.k (and each k of gumbel.k_curriculum), eval.ks and eval.reader_k against the
    candidates per question of `records` (the most any question has). Logs the questions that lose every gold
    passage to the cut at n_candidates."""
    most = max((len(r.ctxs) for r in records), default=0)
    n = cfg.data.n_candidates
    if n > most:
        raise ConfigError(f"data.n_candidates={n}, but {path} has at most {most} candidates per question: set "
                          f"data.n_candidates={most} or less")
    for key, value in (("gumbel.k", cfg.gumbel.k), ("eval.reader_k", cfg.eval.reader_k),
                       *((f"gumbel.k_curriculum[{i}]", k) for i, (_, k) in enumerate(cfg.gumbel.k_curriculum)),
                       *((f"eval.ks[{i}]", k) for i, k in enumerate(cfg.eval.ks))):
        if value > n:
            raise ConfigError(f"{key}={value} is above the {n} candidates per question (data.n_candidates={n}, "
                              f"{path} has up to {most}): every metric at {value} would be the one at {n}; give a "
                              f"value of at most {n}")
    counts = question_counts(records, n)
    if counts["lost_gold"]:
        log.warning("%s: %d of %d questions lose every gold passage to the cut at data.n_candidates=%d (recall is "
                    "computed over the others; a larger data.n_candidates keeps them)", path, counts["lost_gold"],
                    counts["questions"], n)


def short_questions(cfg: RunConfig, records: list[Record]) -> list[Record]:
    """The questions with fewer candidates than gumbel.k or the reader's k (cfg.reader_k())."""
    need = max(cfg.gumbel.k, cfg.reader_k())
    return [r for r in records if len(r.ctxs) < need]


def check_candidate_counts(cfg: RunConfig, path: str, records: list[Record]) -> None:
    """Warn, naming the file, line and id of the first and how many, about questions with fewer candidates than
    gumbel.k / eval.reader_k: their top-k keeps every candidate, so G-Rerank learns nothing from them (training
    drops them: drop_short_questions) and their evaluation at k has no choice to make (they stay in the means)."""
    short = short_questions(cfg, records)
    if not short:
        return
    key = f"gumbel.k={cfg.gumbel.k}" if cfg.gumbel.k >= cfg.reader_k() else f"eval.reader_k={cfg.reader_k()}"
    first = short[0]
    where = f" {first.where}" if first.where else ""
    log.warning("%s%s (id %s): %d candidates, fewer than %s; %d of %d questions have fewer than %d: the top-k keeps "
                "all of their candidates (G-Rerank training drops them; evaluation keeps them in its means). Give "
                "them more candidates, remove them, or lower %s", path, where, first.id, len(first.ctxs), key,
                len(short), len(records), max(cfg.gumbel.k, cfg.reader_k()), key.split("=")[0])


def drop_short_questions(cfg: RunConfig, path: str, records: list[Record]) -> list[Record]:
    """`records` without the questions that have fewer candidates than k, for G-Rerank (objective.name=gumbel: with
    k or fewer candidates its mask keeps them all and gives no gradient), logging how many were dropped; unchanged
    for the other objectives, whose targets cover any number of candidates. Raises ConfigError when none is left."""
    if cfg.objective.name != "gumbel":
        return records
    short = {id(r) for r in short_questions(cfg, records)}
    kept = [r for r in records if id(r) not in short]
    if not kept:
        raise ConfigError(f"every question of {path} has fewer than gumbel.k={cfg.gumbel.k} candidates: nothing for "
                          "G-Rerank to select; lower gumbel.k")
    if short:
        log.warning("train %s: dropped %d of %d questions with fewer than %d candidates (G-Rerank's top-k would "
                    "keep all of them)", path, len(short), len(records), max(cfg.gumbel.k, cfg.reader_k()))
    return kept


def check_tokenizers(cfg: RunConfig, splits: dict[str, tuple[str, list[Record]]], reader_used: bool = True) -> None:
    """The first SAMPLE_QUESTIONS questions of each split through the reader's and the reranker's tokenizers
    (loaded without their models): refused when more than MAX_UNK_SHARE of the tokens are unknown, or when the demo
    reader's decoder input (question + answer) exceeds its max_decoder_tokens. Raises DataError naming the file,
    the share or length and the config that fits."""
    tokenizers = _tokenizers(cfg)
    reader = tokenizers.pop("reader") if not reader_used else tokenizers["reader"]
    for name, (path, records) in splits.items():
        sample = records[:SAMPLE_QUESTIONS]
        if not sample:
            continue
        texts = [t for r in sample for t in (r.question, r.target_text, *(f"{p.title} {p.text}"
                                                                          for p in r.ctxs[: cfg.data.n_candidates]))]
        for which, tok in tokenizers.items():
            unk = tok.unk_token_id
            if unk is None:
                continue
            # verbose=False: no "Token indices sequence length is longer than ..." warning (nothing is fed to a
            # model here); what the reranker's truncation cuts is counted by note_truncated
            ids = [i for row in tok(texts, add_special_tokens=False, verbose=False)["input_ids"] for i in row]
            share = sum(i == unk for i in ids) / max(1, len(ids))
            if share > MAX_UNK_SHARE:
                raise DataError(path, f"{share:.0%} of the {which} tokenizer's tokens are unknown ({tok.unk_token}) "
                                f"on its first {len(sample)} questions: the {which}'s vocabulary ({len(tok)} tokens) "
                                f"does not fit this data. {FIT_HINT}")
        if cfg.reader.kind == "demo_fid" and reader_used:
            _check_demo_decoder(cfg, path, sample, reader)
        if "reranker" in tokenizers:
            note_truncated(tokenizers["reranker"], name, path, records, cfg.data.n_candidates,
                           cfg.reranker.max_tokens)


def count_truncated(tokenizer, passages: list[str], max_tokens: int) -> int:
    """How many of the distinct `passages` are longer than max_tokens tokens (without special tokens) and so are cut
    by the reranker's truncation. Tokenized with verbose=False: no transformers "Token indices sequence length"
    warning."""
    distinct = sorted(set(passages))
    count = 0
    for i in range(0, len(distinct), 1024):
        rows = tokenizer(distinct[i : i + 1024], add_special_tokens=False, verbose=False)["input_ids"]
        count += sum(len(row) > max_tokens for row in rows)
    return count


def note_truncated(tokenizer, name: str, path: str, records: list[Record], n: int, max_tokens: int) -> int:
    """One log line when some distinct passages among the first n candidates of `records` are longer than
    reranker.max_tokens (count_truncated): the reranker reads only their first max_tokens tokens. Returns the
    count."""
    passages = [passage_string(p.title, p.text) for r in records for p in r.ctxs[:n]]
    cut = count_truncated(tokenizer, passages, max_tokens)
    if cut:
        log.info("%s %s: %d of %d distinct passages are longer than reranker.max_tokens=%d tokens; the reranker "
                 "reads the first %d (the rest is cut, counted once per run)", name, path, cut, len(set(passages)),
                 max_tokens, max_tokens)
    return cut


def _check_demo_decoder(cfg: RunConfig, path: str, sample: list[Record], tok) -> None:
    """The demo reader's decoder reads [BOS] question [ANS] answer: at most max_decoder_tokens tokens."""
    limit = _demo_reader_config(cfg).get("max_decoder_tokens", 16)
    for r in sample:
        q = len(tok(r.question, add_special_tokens=False)["input_ids"])
        a = min(len(tok(r.target_text, add_special_tokens=False)["input_ids"]), cfg.reader.answer_max_tokens - 1)
        if 2 + q + a > limit:
            raise DataError(path, f"question and answer take {2 + q + a} decoder tokens, the demo reader reads at "
                            f"most {limit} (max_decoder_tokens). {FIT_HINT}", record_id=r.id, field="question")


def _demo_reader_config(cfg: RunConfig) -> dict:
    import json

    if cfg.reader.name_or_path and (Path(cfg.reader.name_or_path) / "config.json").is_file():
        return json.loads((Path(cfg.reader.name_or_path) / "config.json").read_text())
    return dict(cfg.reader.model_config)


def _tokenizers(cfg: RunConfig) -> dict:
    """{"reader": tokenizer, "reranker": tokenizer} as models.build_models would give them, without the weights."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from gr_train import synthetic

    r = cfg.reader
    if r.kind == "demo_fid":
        reader = PreTrainedTokenizerFast.from_pretrained(r.name_or_path) if r.name_or_path else \
            synthetic.build_tokenizer(cfg.synthetic)
    elif r.tokenizer_path or r.name_or_path:
        reader = AutoTokenizer.from_pretrained(r.tokenizer_path or r.name_or_path)
    else:
        from gr_train.reader import byte_level_tokenizer

        reader = byte_level_tokenizer()
    rr = cfg.reranker
    path = rr.tokenizer_path or rr.name_or_path
    tokenizers = {"reader": reader}
    if not path:  # the tiny reranker built from scratch shares the reader's vocabulary (models.build_models)
        tokenizers["reranker"] = reader
    elif not Path(path).is_dir() or any(Path(path).glob("tokenizer*")):
        tokenizers["reranker"] = AutoTokenizer.from_pretrained(path)
    return tokenizers
