"""Export a trained reranker as a self-contained HF folder with a model card (README.md).

The folder loads with plain `transformers` (scoring recipe in the card, per kind), as a gr-train reranker
(`Reranker.load`), and, for cross-encoders and causal_lm rerankers (a LogitScore head over the causal LM), with
`sentence_transformers.CrossEncoder(folder)` giving the raw scores w.
Run: `gr-train export --run-dir RUN [--checkpoint final] --output DIR [--eval FILE ...]`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from gr_train.checkpoint import param_checksum
from gr_train.checks import UserError
from gr_train.config import RunConfig, load_config, save_config
from gr_train.data import DataError
from gr_train.inputs import RERANK_TEMPLATE_MARK
from gr_train.objectives import OBJECTIVES
from gr_train.reranker import SETTINGS_FILE, Reranker

log = logging.getLogger("gr_train.export")

CARD_FILE = "README.md"
CONFIG_FILE = "gr_train_config.yaml"  # the resolved training config, copied next to the weights
# Eval JSON looked for in a run dir when no --eval is given: `gr-train demo` writes results.json (untrained and
# trained rows), `gr-train evaluate` writes eval.json (one result).
EVAL_FILES = ("results.json", "eval.json")
# sentence-transformers' CrossEncoder applies a sigmoid to single-logit models unless config.json names another
# activation (CrossEncoder.get_default_activation_fn, v4+); Identity makes CrossEncoder.predict return w itself.
CROSS_ENCODER_ACTIVATION = "torch.nn.modules.linear.Identity"

# How the model card shows an objective.* setting that an objective's row lists (objectives.Objective.settings).
SETTING_ROWS = {
    "theta": lambda o: f"| theta | {o.theta:g} (`objective.theta`, target temperature) |",
    "supervised_loss": lambda o: f"| supervised loss | {o.supervised_loss} |",
}


def export_run(source: str | Path, out_dir: str | Path, checkpoint: str = "final",
               eval_paths: list[str | Path] | None = None) -> Path:
    """Export the reranker of a training run.

    Args:
        source: a run dir (`<source>/<checkpoint>/reranker`), a checkpoint folder (`<source>/reranker`) or a
            reranker folder written by `Reranker.save` (holds gr_train_reranker.json).
        out_dir: the export folder (created; files of the same name are overwritten).
        checkpoint: checkpoint folder inside a run dir; only `final/` holds an exported reranker.
        eval_paths: eval JSON files for the card's table, each with a row of this reranker (its
            reranker_checksum); None = the results.json / eval.json of the checkpoint folder and the run dir that
            evaluated this reranker (others are skipped with a warning).
    Returns: out_dir.
    Raises: FileNotFoundError naming the missing folder, reranker folder, config.yaml or eval file; DataError
        naming an eval file without results; UserError naming an eval file of another reranker.
    """
    reranker_dir, checkpoint_dir, run_dir = _locate(Path(source), checkpoint)
    config_path = next((p / "config.yaml" for p in (checkpoint_dir, run_dir)
                        if p is not None and (p / "config.yaml").is_file()), None)
    if config_path is None:
        raise FileNotFoundError(f"export: no config.yaml next to {reranker_dir} (looked in its checkpoint folder and "
                                "run dir): the model card needs the training config")
    cfg = load_config(config_path)
    step = None
    if checkpoint_dir is not None and (checkpoint_dir / "trainer_state.json").is_file():
        state = json.loads((checkpoint_dir / "trainer_state.json").read_text())
        step = {"step": state.get("step"), "world_size": state.get("world_size", 1)}
    reranker = Reranker.load(reranker_dir)
    checksum = param_checksum(reranker)
    evaluation = {}
    if eval_paths is None:  # the eval files found next to the reranker, if they evaluated this very reranker
        found = [d / name for d in (checkpoint_dir, run_dir) if d is not None for name in EVAL_FILES
                 if (d / name).is_file()]
        for path in found:
            results = read_eval(path)
            if _evaluated(results, checksum):
                evaluation.update(results)
            else:
                log.warning("export: %s evaluated another reranker (its weights' checksum differs): not in the "
                            "model card", path)
    for path in eval_paths or []:
        results = read_eval(path)
        if not _evaluated(results, checksum):
            raise UserError(f"export: {path} did not evaluate the reranker in {reranker_dir} (no row has its "
                            "weights' checksum, reranker_checksum): evaluate it first, `gr-train evaluate "
                            f"reranker.name_or_path={reranker_dir} ...`, and pass that eval.json")
        evaluation.update(results)
    return export_reranker(reranker, out_dir, cfg, evaluation, step,
                           source=f"`{reranker_dir}` (training config `{config_path}`)")


def _evaluated(results: dict[str, dict], checksum: str) -> bool:
    """Whether one of the results (rows of an eval file) is of the reranker whose weights have `checksum`; the other
    rows of such a file (demo's untrained row) are its references."""
    return any(r.get("reranker_checksum") == checksum for r in results.values())


def _locate(source: Path, checkpoint: str) -> tuple[Path, Path | None, Path | None]:
    """(reranker folder, checkpoint folder or None, run dir or None) for a run / checkpoint / reranker folder."""
    if not source.is_dir():
        raise FileNotFoundError(f"export: {source} not found (expected a run dir, checkpoint or reranker folder)")
    if (source / SETTINGS_FILE).is_file():  # a reranker folder; <run_dir>/<checkpoint>/reranker when from a run
        in_run = (source.parent / "config.yaml").is_file()
        return source, source.parent if in_run else None, source.parent.parent if in_run else None
    if (source / "reranker").is_dir() or (source / "trainer_state.json").is_file():  # a checkpoint folder
        reranker_dir, checkpoint_dir, run_dir = source / "reranker", source, source.parent
    else:
        reranker_dir, checkpoint_dir, run_dir = source / checkpoint / "reranker", source / checkpoint, source
    if not (reranker_dir / SETTINGS_FILE).is_file():
        hint = ("step checkpoints hold training state only (resume from them); the reranker is exported to "
                "final/reranker when a run finishes" if checkpoint_dir.name != "final" else
                "has the run finished? (objective.name=reader runs train the reader and have no reranker)")
        raise FileNotFoundError(f"export: no reranker at {reranker_dir} (expected a folder written by "
                                f"Reranker.save, with {SETTINGS_FILE}): {hint}")
    return reranker_dir, checkpoint_dir, run_dir


def read_eval(path: str | Path) -> dict[str, dict]:
    """{row name: evaluate() result} from an eval JSON: one result (`gr-train evaluate`, row named after the
    file) or a mapping of named results (`gr-train demo` results.json; other entries are skipped). A result has
    gold ranking metrics ("ranking"), label-free ones ("label_free") or both."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"export: eval file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON: {e}") from None
    if _is_result(data):
        return {path.name: data}
    items = data.items() if isinstance(data, dict) else []
    results = {k: v for k, v in items if _is_result(v)}
    if not results:
        raise DataError(path, "no evaluation results (expected the JSON of `gr-train evaluate` or `gr-train demo`)")
    return results


def _is_result(value) -> bool:
    """An evaluate() result: gold metrics, label-free metrics (unlabelled data) or both."""
    return isinstance(value, dict) and ("ranking" in value or "label_free" in value)


def export_reranker(reranker: Reranker, out_dir: str | Path, cfg: RunConfig,
                    evaluation: dict[str, dict] | None = None, step: dict | None = None,
                    source: str | None = None) -> Path:
    """Write `reranker` to `out_dir`: HF model + tokenizer, gr_train_reranker.json, the training config
    (gr_train_config.yaml) and README.md (model card built from `cfg`, `evaluation` and `step`).

    Args:
        reranker: the trained reranker (in memory; its weights are saved as they are).
        cfg: the run's config (data, objective, optimizer and reader are read from it).
        evaluation: {row name: evaluate() result} for the card's table; None or {} = "not evaluated".
        step: {"step": optimizer steps done, "world_size": ranks} from the checkpoint; None = train.max_steps.
        source: where the reranker came from (Markdown), recorded in the card.
    Returns: out_dir. Files that differ from `Reranker.save`: the tokenizer's model_max_length is
    reranker.max_tokens (so tokenizers and CrossEncoder truncate like gr-train), and a cross-encoder's
    config.json names the Identity activation for sentence-transformers. A causal_lm reranker's folder also gets a
    chat template that renders the messages [{"role": "query"}, {"role": "document"}] as its training prompt (other
    conversations as the model's own template did) and the sentence-transformers module files (modules.json,
    sentence_bert_config.json, config_sentence_transformers.json with the Identity activation, 1_LogitScore/: the
    yes and no token ids), so `CrossEncoder(folder).predict(pairs)` returns w (sentence-transformers 6.x).
    """
    out_dir = Path(out_dir)
    src = reranker.cfg.name_or_path
    if src and Path(src).is_dir() and Path(src).resolve() == out_dir.resolve():  # would overwrite what it reads
        raise ValueError(f"export: output {out_dir} is the reranker's own folder; export to a new folder")
    reranker.save(out_dir)
    _update_json(out_dir / "tokenizer_config.json", {"model_max_length": reranker.cfg.max_tokens})
    if reranker.kind == "cross_encoder":  # keeps other sentence_transformers keys a base model's config had
        st = getattr(reranker.model.config, "sentence_transformers", None) or {}
        _update_json(out_dir / "config.json",
                     {"sentence_transformers": {**st, "activation_fn": CROSS_ENCODER_ACTIVATION}})
    if reranker.kind == "causal_lm":
        tokenizer = copy.deepcopy(reranker.tokenizer)
        tokenizer.chat_template = causal_lm_chat_template(reranker)
        tokenizer.save_pretrained(out_dir)
        _update_json(out_dir / "tokenizer_config.json", {"model_max_length": reranker.cfg.max_tokens})
        _write_logit_score_modules(reranker, out_dir)
    save_config(cfg, out_dir / CONFIG_FILE)
    (out_dir / CARD_FILE).write_text(model_card(reranker, out_dir, cfg, evaluation or {}, step, source))
    return out_dir


def causal_lm_chat_template(reranker: Reranker) -> str:
    """A Jinja chat template that renders [{"role": "query", "content": q}, {"role": "document", "content": d}]
    (sentence-transformers' CrossEncoder maps a pair to these roles) as the reranker's training prompt, prefix + q +
    middle + d + suffix (inputs.rerank_prompt_parts), with no generation prompt; any other conversation as the
    tokenizer's own template (none: nothing). Marked with inputs.RERANK_TEMPLATE_MARK, so a gr-train reranker
    loaded from the folder reads its prompt back from it."""
    prefix, middle, suffix = (json.dumps(part, ensure_ascii=False) for part in reranker.inputs.parts)
    original = reranker.tokenizer.chat_template or ""
    return (
        f"{{#- {RERANK_TEMPLATE_MARK}: pairs as roles query and document (sentence-transformers CrossEncoder) -#}}\n"
        "{%- macro text(m) -%}{%- if m.content is string -%}{{ m.content }}{%- else -%}"
        "{{ m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') }}"
        "{%- endif -%}{%- endmacro -%}\n"
        "{%- set q = messages | selectattr('role', 'equalto', 'query') | list -%}\n"
        "{%- set d = messages | selectattr('role', 'equalto', 'document') | list -%}\n"
        f"{{%- if q and d -%}}{{{{ {prefix} }}}}{{{{ text(q[0]) }}}}{{{{ {middle} }}}}{{{{ text(d[0]) }}}}"
        f"{{{{ {suffix} }}}}{{%- else -%}}{original}{{%- endif -%}}"
    )


def _write_logit_score_modules(reranker: Reranker, out_dir: Path) -> None:
    """sentence-transformers 6.x module files: the causal LM (Transformer, text-generation, logits of the last
    position) then LogitScore(yes id, no id) = logit(yes) - logit(no), with the Identity activation (the layout
    CrossEncoder.save writes for such a model)."""
    (out_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LogitScore",
         "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"},
    ], indent=2) + "\n")
    forward = {"method": "forward", "method_output_name": "logits"}
    (out_dir / "sentence_bert_config.json").write_text(json.dumps({
        "transformer_task": "text-generation",
        "modality_config": {"text": forward, "message": {**forward, "format": "flat"}},
        "module_output_name": "causal_logits",
    }, indent=2) + "\n")
    (out_dir / "config_sentence_transformers.json").write_text(json.dumps({
        "activation_fn": CROSS_ENCODER_ACTIVATION, "default_prompt_name": None, "model_type": "CrossEncoder",
        "prompts": {},
    }, indent=2) + "\n")
    (out_dir / "1_LogitScore").mkdir(exist_ok=True)
    (out_dir / "1_LogitScore" / "config.json").write_text(json.dumps({
        "true_token_id": reranker.yes_id, "false_token_id": reranker.no_id, "module_input_name": "causal_logits",
    }, indent=2) + "\n")


def _update_json(path: Path, updates: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **updates}, indent=2) + "\n")


def model_card(reranker: Reranker, out_dir: Path, cfg: RunConfig, evaluation: dict[str, dict],
               step: dict | None, source: str | None) -> str:
    """README.md: YAML front matter, model, training settings, evaluation table, how to score."""
    kind, rcfg = reranker.kind, reranker.cfg
    objective = cfg.objective.name
    masked = OBJECTIVES[objective].needs_noise  # trained through the relaxed top-k mask: G-Rerank
    base = cfg.reranker.name_or_path
    front: dict[str, Any] = {
        "library_name": "sentence-transformers" if kind in ("cross_encoder", "causal_lm") else "transformers",
        "tags": ["gr-train", "reranker", "rag", kind.replace("_", "-"),
                 *(["gumbel-reranking"] if masked else [])],
    }
    if kind in ("cross_encoder", "causal_lm"):
        front["pipeline_tag"] = "text-ranking"
    if base and not Path(base).exists():  # a hub id (a local folder is no valid base_model)
        front["base_model"] = base
    scratch = "none: random init from gr-train's tiny config" + (
        f" with `reranker.model_config` {_code(cfg.reranker.model_config)}" if cfg.reranker.model_config else "")
    base_cell = f"`{base}`" if base else scratch
    n_params = sum(p.numel() for p in reranker.model.parameters())
    per = {"bi_encoder": "text", "causal_lm": "prompt"}.get(kind, "input")
    reader = f"`{cfg.reader.name_or_path}`" if cfg.reader.name_or_path else "(random init from `reader.model_config`)"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# gr-train reranker: {kind}, objective `{objective}`", "",
        f"A RAG passage reranker trained with gr-train by {_method(cfg)}. "
        + (_conditional_intro(rcfg) if rcfg.conditional else
           "It scores each (question, passage) pair independently; higher w = more useful to the reader."), "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| reranker kind | `{kind}`: {_score_rule(reranker)} |",
        f"| base model | {base_cell} |",
        f"| architecture | `{type(reranker.model).__name__}`, {n_params:,} parameters |",
        f"| max tokens | {rcfg.max_tokens} per {per} ({_cut_rule(kind)}) |",
        "| passage text | `title + \" \" + text` (just the text when there is no title) |",
        *([f"| exported from | {source} |"] if source else []),
        "", "## Training", "",
        "| setting | value |", "|---|---|",
        f"| objective | `objective.name={objective}` |",
        *_objective_rows(cfg),
        f"| reader (frozen) | `{cfg.reader.kind}` {reader} |",
        f"| training data | {_data_cell(cfg.data.train_path)} |",
        f"| dev data | {_data_cell(cfg.data.dev_path)} |",
        f"| candidates per question | {cfg.data.n_candidates} (`data.n_candidates`) |",
        f"| optimizer | AdamW, lr {cfg.optim.lr:g} ({cfg.optim.lr_schedule}, {cfg.optim.warmup_steps} warm-up steps), "
        f"weight decay {cfg.optim.weight_decay:g}, grad clip {cfg.optim.grad_clip:g} |",
        f"| steps | {_steps_cell(cfg, step)} |",
        f"| batch | {_batch_cell(cfg, step)} |",
        f"| seed | {cfg.run.seed} |",
        "", "## Evaluation", "",
        *_evaluation_lines(evaluation),
        "", "## How to score", "",
        "With plain `transformers` (reproduces gr-train's `Reranker.score` to float rounding):", "",
        "```python", _transformers_snippet(reranker, out_dir), "```",
    ]
    if kind == "causal_lm":
        lines += [
            "", "With `sentence-transformers` (6.x: the causal LM with a `LogitScore` head, logit(yes) - logit(no) at "
            "the last token; the folder's chat template renders each pair as the training prompt; "
            "`config_sentence_transformers.json` sets the Identity activation, so `predict` returns w; pairs longer "
            "than max tokens are cut differently from gr-train, which cuts the passage and keeps the template):", "",
            "```python", _cross_encoder_snippet(out_dir), "```",
        ]
    if kind == "bi_encoder":
        lines += [
            "", "With `sentence-transformers` (`SentenceTransformer(folder)` builds the same mean pooling over the last "
            "hidden states; w = score_scale * cos):", "",
            "```python", _sentence_transformer_snippet(reranker, out_dir), "```",
        ]
    if kind == "cross_encoder":
        lines += [
            "", "With `sentence-transformers` (>= 4; `config.json` sets the Identity activation, so `predict` returns "
            "the raw score w rather than sigmoid(w); the tokenizer truncates at max tokens):", "",
            "```python", _cross_encoder_snippet(out_dir), "```",
        ]
    lines += ["", f"With gr-train: `Reranker.load(path).score(questions, passages)` → w: [B, n]. The full training "
              f"config is in `{CONFIG_FILE}`, the scoring settings in `{SETTINGS_FILE}`.", ""]
    return "\n".join(lines)


def _cut_rule(kind: str) -> str:
    if kind == "causal_lm":  # inputs.CausalLMRerankerInputs
        return "a longer prompt is made again with its passage cut from the end, the template kept whole"
    return "longer inputs are truncated"


def _code(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def _score_rule(reranker: Reranker) -> str:
    if reranker.kind == "cross_encoder":
        return "w = logits[:, 0] of `AutoModelForSequenceClassification` (num_labels=1) on the pair (question, passage)"
    if reranker.kind == "causal_lm":
        return (f"w = logit(`{reranker.cfg.yes_token}`) - logit(`{reranker.cfg.no_token}`) of `AutoModelForCausalLM` "
                "at the last token of the Qwen3-Reranker prompt (the folder's chat template with roles query and "
                f"document; instruction: {reranker.cfg.instruction!r})")
    if reranker.kind == "rankt5":
        return (f"w = logit of `{reranker.cfg.score_token}` at the first decoder step of `AutoModelForSeq2SeqLM` on "
                "`Query: {question} Document: {passage}`")
    return (f"w = {reranker.cfg.score_scale:g} * cos(mean_pool(question), mean_pool(passage)), mean over non-pad "
            "last hidden states of `AutoModel`")


ESTIMATOR_CARD = {  # gumbel.ESTIMATORS, one line each for the model card
    "max_softmax": "the paper's relaxation, max over k Gumbel-softmax samples",
    "subset": "relaxed k-subset of the Gumbel-perturbed scores, exactly k passages of mass",
    "straight_through": "the reader read the hard Gumbel top-k sample; gradients of the relaxed k-subset (a "
                        "conditional reranker: of each selection step's Gumbel-softmax)",
    "score_function": "the reader read sampled k-sets; REINFORCE on each set's log-probability with the other "
                      "samples' mean loss as baseline",
}


GUMBEL_METHOD = {  # gumbel.estimator → how G-Rerank trained the reranker, for the card's first line
    "max_softmax": "the relaxed top-k mask M = max_j softmax((kappa * w + G_j) / tau) gates the frozen reader's "
                   "attention to each passage",
    "subset": "the relaxed k-subset mask M = sigmoid((kappa * w + G) / tau - nu), sum_i M_i = k, gates the frozen "
              "reader's attention to each passage",
    "straight_through": "the frozen reader reads exactly the Gumbel top-k sample of kappa * w (gradients of the "
                        "relaxed k-subset)",
    "score_function": "the frozen reader reads k-sets sampled from the reranker's selection policy softmax(kappa * "
                      "w) (REINFORCE, the other samples' mean loss as baseline)",
}


def _method(cfg: RunConfig) -> str:
    """The objective's model-card line; G-Rerank's names the estimator that trained the model (gumbel.estimator)."""
    if cfg.objective.name != "gumbel":
        return OBJECTIVES[cfg.objective.name].description
    return (f"G-Rerank (Gumbel Reranking): {GUMBEL_METHOD[cfg.gumbel.estimator]}, and the reader's answer loss "
            "trains the reranker (no labels)")


def _conditional_intro(rcfg) -> str:
    """The card's opening for a conditional reranker (reranker.conditional): what its scores mean and how to select."""
    return (
        "It selects passages one at a time: step 1 scores each (question, passage) pair; step t scores each remaining "
        "passage against the question followed by the passages chosen before it, the most recent first, as one "
        f"text cut to {rcfg.condition_tokens()} tokens (`reranker.conditional_max_tokens`). The snippets below give "
        "step 1's scores; the selection is `Reranker.load(path).select(questions, passages, k)` (gr-train, greedy)."
    )


def _objective_rows(cfg: RunConfig) -> list[str]:
    g, objective = cfg.gumbel, OBJECTIVES[cfg.objective.name]
    reader_k = cfg.reader_k()
    if not objective.needs_noise:  # not trained through the mask: k only matters for the evaluation
        rows = [f"| k | {reader_k} (passages given to the reader at evaluation; `eval.reader_k` or `gumbel.k`) |"]
        return rows + [SETTING_ROWS[key](cfg.objective) for key in objective.settings]
    return [
        f"| estimator | {g.estimator} (`gumbel.estimator`: {ESTIMATOR_CARD[g.estimator]}"
        + ("" if g.sample_count() == 1 else f"; {g.sample_count()} "
           f"{'sampled sets' if g.estimator == 'score_function' else 'masks'} per question per step, `gumbel.samples`")
        + ") |",
        f"| k | {g.k} (`gumbel.k`: passages of the training mask; hard top-k at inference"
        + (f"; the reader got the top-{reader_k} at evaluation" if reader_k != g.k else "") + ") |",
        f"| kappa | {_schedule(g.kappa, g.kappa_end, g.schedule, 'score scale', 'kappa')} |",
        f"| tau | {_schedule(g.tau, g.tau_end, g.schedule, 'temperature', 'tau')} |",
        f"| schedule | {g.schedule} (`gumbel.schedule`) |",
        f"| noise | {str(g.noise).lower()} (`gumbel.noise`; false = the no-noise ablation) |",
    ]


def _schedule(start: float, end: float | None, schedule: str, what: str, key: str) -> str:
    if end is None:
        return f"{start:g} ({what}; `gumbel.{key}`, constant)"
    return f"{start:g} → {end:g} ({what}; `gumbel.{key}` → `gumbel.{key}_end`, {schedule} over training)"


def _data_cell(path: str | None) -> str:
    if not path:
        return "none"
    try:
        from gr_train.data import load_any

        return f"`{path}` ({len(load_any(path)):,} questions)"
    except (OSError, ValueError):  # moved or deleted since training (DataError is a ValueError)
        return f"`{path}` (not readable at export time; question count unknown)"


def _steps_cell(cfg: RunConfig, step: dict | None) -> str:
    if step is None or step.get("step") is None:
        return f"{cfg.train.max_steps} (`train.max_steps`)"
    return f"{step['step']} optimizer steps (`train.max_steps={cfg.train.max_steps}`)"


def _batch_cell(cfg: RunConfig, step: dict | None) -> str:
    t = cfg.train
    ranks = (step or {}).get("world_size") or 1
    return (f"{cfg.global_batch(ranks)} questions per step (micro_batch_size "
            f"{t.micro_batch_size} x grad_accum_steps {t.grad_accum_steps} x {ranks} ranks)")


def _evaluation_lines(evaluation: dict[str, dict]) -> list[str]:
    """The tables `gr-train evaluate` prints: evaluate.format_table (gold metrics) of the results with is_gold labels,
    then evaluate.format_label_free_table (answer recall@k, EM, F1, hard top-k loss, 95% intervals) of those with
    label-free metrics; each with the cut-offs every one of its results has. Unlabelled results: the second alone."""
    if not evaluation:
        return ["Not evaluated (no eval JSON: run `gr-train evaluate` and export with `--eval FILE`)."]
    from gr_train.evaluate import format_label_free_table, format_table

    gold = {name: r for name, r in evaluation.items() if "ranking" in r}
    free = {name: r for name, r in evaluation.items() if "label_free" in r}
    lines = []
    if gold:
        lines += [format_table(gold, _cutoffs([r["ranking"]["all"] for r in gold.values()], "recall")), ""]
    if free:
        lines += [format_label_free_table(free, _cutoffs([r["label_free"] for r in free.values()], "answer_recall")),
                  ""]
    questions = sorted({r.get("questions") for r in evaluation.values() if r.get("questions") is not None})
    reader_k = sorted({r["reader"]["k"] for r in evaluation.values() if "k" in r.get("reader", {})})
    notes = [f"{'/'.join(map(str, questions))} dev questions" if questions else "",
             f"EM/F1 with the reader given the top-{'/'.join(map(str, reader_k))}" if reader_k else "no reader EM",
             "R@k = recall of gold passages (all / direct: contains the answer / indirect: a bridge) in the top k"
             if gold else "no is_gold labels on the evaluation data: the label-free metrics only"]
    return [*lines, "; ".join(n for n in notes if n) + "."]


def _cutoffs(tables: list[dict], metric: str) -> list[int]:
    """The k of every `metric`@k key that all `tables` have, ascending."""
    found = [{int(m) for key in t for m in re.findall(rf"^{metric}@(\d+)$", key)} for t in tables]
    return sorted(set.intersection(*found))


def _transformers_snippet(reranker: Reranker, out_dir: Path) -> str:
    """Self-contained Python that defines score(pairs) -> w: [N] for this kind, then scores one example."""
    max_tokens = reranker.cfg.max_tokens
    head = ["import torch"]
    kind = reranker.kind
    if kind == "cross_encoder":
        head += [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
            f'path = "{out_dir.resolve()}"',
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForSequenceClassification.from_pretrained(path).eval()", "",
            "",
            "def score(pairs):",
            '    """pairs: [(question, passage)], passage = title + " " + text. Returns w: [N]."""',
            "    questions, passages = [q for q, _ in pairs], [p for _, p in pairs]",
            f"    enc = tokenizer(questions, passages, padding=True, truncation=True, max_length={max_tokens}, "
            'return_tensors="pt")',
            "    with torch.no_grad():",
            "        return model(**enc).logits[:, 0]",
        ]
    elif kind == "rankt5":
        head += [
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer", "",
            f'path = "{out_dir.resolve()}"',
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()",
            f'score_token_id = tokenizer.convert_tokens_to_ids("{reranker.cfg.score_token}")', "",
            "",
            "def score(pairs):",
            '    """pairs: [(question, passage)], passage = title + " " + text. Returns w: [N]."""',
            '    texts = [f"Query: {q} Document: {p}" for q, p in pairs]',
            f'    enc = tokenizer(texts, padding=True, truncation=True, max_length={max_tokens}, return_tensors="pt")',
            "    start = torch.full((len(texts), 1), model.config.decoder_start_token_id)",
            "    with torch.no_grad():",
            "        logits = model(**enc, decoder_input_ids=start).logits  # [N, 1, V]: one decoder step",
            "    return logits[:, 0, score_token_id]",
        ]
    elif kind == "causal_lm":
        head += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'path = "{out_dir.resolve()}"',
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForCausalLM.from_pretrained(path).eval()",
            f"yes_id, no_id = {reranker.yes_id}, {reranker.no_id}  # tokens {reranker.cfg.yes_token!r}, "
            f"{reranker.cfg.no_token!r}", "",
            "",
            "def score(pairs):",
            '    """pairs: [(question, passage)], passage = title + " " + text, each prompt within max tokens (gr-train '
            'cuts a longer one\'s passage). Returns w: [N], one pair at a time."""',
            "    w = []",
            "    for question, passage in pairs:",
            '        messages = [{"role": "query", "content": question}, {"role": "document", "content": passage}]',
            "        prompt = tokenizer.apply_chat_template(messages, tokenize=False)  # the training prompt",
            '        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]',
            "        with torch.no_grad():",
            "            logits = model(input_ids=ids).logits[0, -1].float()",
            "        w.append(logits[yes_id] - logits[no_id])",
            "    return torch.stack(w)",
        ]
    else:
        head += [
            "from transformers import AutoModel, AutoTokenizer", "",
            f'path = "{out_dir.resolve()}"',
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = AutoModel.from_pretrained(path).eval()", "",
            "",
            "def embed(texts):",
            '    """Mean of the last hidden states over non-pad tokens: [N, d]."""',
            f'    enc = tokenizer(texts, padding=True, truncation=True, max_length={max_tokens}, return_tensors="pt")',
            "    with torch.no_grad():",
            "        hidden = model(**enc).last_hidden_state",
            '    mask = enc["attention_mask"].unsqueeze(-1).float()',
            "    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)",
            "",
            "",
            "def score(pairs):",
            '    """pairs: [(question, passage)], passage = title + " " + text. Returns w: [N]."""',
            "    questions, passages = [q for q, _ in pairs], [p for _, p in pairs]",
            "    cos = torch.cosine_similarity(embed(questions), embed(passages), dim=-1)",
            f"    return {reranker.cfg.score_scale!r} * cos",
        ]
    return "\n".join([*head, "", "", f"print(score({_EXAMPLE!r}))"])


_EXAMPLE = [("who wrote hamlet", "Hamlet Hamlet is a tragedy written by William Shakespeare")]


def _sentence_transformer_snippet(reranker: Reranker, out_dir: Path) -> str:
    return "\n".join([
        "import torch",
        "from sentence_transformers import SentenceTransformer", "",
        f'model = SentenceTransformer("{out_dir.resolve()}")  # no modules.json: mean pooling, as in training',
        f"model.max_seq_length = {reranker.cfg.max_tokens}", "",
        "",
        "def score(pairs):",
        '    """pairs: [(question, passage)], passage = title + " " + text. Returns w: [N]."""',
        "    q = model.encode([q for q, _ in pairs], convert_to_tensor=True)",
        "    p = model.encode([p for _, p in pairs], convert_to_tensor=True)",
        f"    return {reranker.cfg.score_scale!r} * torch.nn.functional.cosine_similarity(q, p)",
        "", "",
        f"print(score({_EXAMPLE!r}))",
    ])


def _cross_encoder_snippet(out_dir: Path) -> str:
    return "\n".join([
        "from sentence_transformers import CrossEncoder", "",
        f'model = CrossEncoder("{out_dir.resolve()}")', "",
        "",
        "def score(pairs):",
        '    """pairs: [(question, passage)], passage = title + " " + text. Returns w: numpy [N]."""',
        "    return model.predict(pairs)",
        "", "",
        f"print(score({_EXAMPLE!r}))",
    ])
