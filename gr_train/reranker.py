"""Rerankers: score each question's n candidate passages, w = R(q, d_i) → w: [B, n] fp32 (docs/design.md#scores).

Kinds (`cfg.reranker.kind`): cross_encoder (sequence-classification logit of the pair), rankt5 (logit of a score token
at the first decoder step of a T5), bi_encoder (scaled cosine of mean-pooled embeddings), causal_lm (yes/no log-odds
of a decoder-only LLM, Qwen3-Reranker's form). `build_reranker(cfg)` builds one from a HF folder / hub id or from a
tiny config, optionally with LoRA adapters (reranker.lora_rank); `Reranker.save` writes a plain HF folder (adapters
merged) that loads back exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from gr_train.config import RerankerSection
from gr_train.data import PassageText
from gr_train.inputs import RERANKER_INPUTS, RerankerInputs, conditioned_questions
from gr_train.lengths import check_budget, position_limit
from gr_train.reader_tuning import inject_lora, save_merged
from gr_train.selection import StepScorer, greedy

log = logging.getLogger(__name__)

# Written next to the HF files by Reranker.save: the kind and the settings that, with the weights, define w.
SETTINGS_FILE = "gr_train_reranker.json"

# Tiny defaults used when building from scratch (no name_or_path); cfg.model_config overrides them.
TINY_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_RANKT5 = {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64, "d_kv": 16}
TINY_CAUSAL_LM = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                  "intermediate_size": 64}

# Files that mark a local folder as holding a tokenizer. Checked explicitly because transformers 5.24's
# AutoTokenizer on a folder without any of them silently returns an empty-vocabulary tokenizer (all [UNK]).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


class Reranker(nn.Module):
    """Scores (question, passage) pairs. Shapes: B questions, n candidates, L tokens.

    Subclasses set `kind`, the HF auto class they load (`auto_class`) and the config keys that change w besides
    the weights (`scoring_keys`, saved in SETTINGS_FILE and checked on load).
    """

    kind: str
    auto_class: Any
    scoring_keys: tuple[str, ...] = ()
    # the keys of every kind that change which passages are selected besides the weights (saved and checked too)
    selection_keys: tuple[str, ...] = ("conditional", "conditional_max_tokens")

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: RerankerSection):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.inputs = reranker_inputs(self.kind, tokenizer, cfg, cfg.max_tokens)
        # conditioned questions (reranker.conditional) are longer than plain ones: their own token budget
        self.conditioned_inputs = reranker_inputs(self.kind, tokenizer, cfg, cfg.condition_tokens())

    def tokenize(self, questions: list[str], passages: list[list[PassageText]]) -> dict[str, torch.Tensor]:
        """Model inputs for B questions with n (title, text) candidates each, truncated to cfg.max_tokens
        (`self.inputs.tokenize`, gr_train.inputs: the kind's RerankerInputs, where the shapes are given)."""
        return self.inputs.tokenize(questions, passages)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """w: [B, n] fp32, one independent score per (question, candidate) pair."""
        raise NotImplementedError

    def step_scorer(self, inputs: dict[str, torch.Tensor], questions: list[str],
                    passages: list[list[PassageText]]) -> StepScorer:
        """The scorer of sequential selection (selection.py) for B questions with n candidates: chosen [B, t] long →
        w_t [B, n] fp32. Step 0 (t = 0) is forward(inputs), computed once. A pointwise reranker returns it at every
        step; with reranker.conditional, step t scores each candidate against the question followed by the chosen
        passages' text (inputs.conditioned_questions, cut to reranker.conditional_max_tokens). `inputs` is
        tokenize(questions, passages) on the model's device. A (question, chosen prefix) is scored once per scorer:
        samples that drew the same prefix (selection.sample, gumbel.samples) share its scores and their graph."""
        w0 = self(inputs)
        if not self.cfg.conditional:
            return lambda chosen: w0
        device = inputs["input_ids"].device

        def rows_scores(rows: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
            # every pair of the rows re-encoded (cross-encoder, RankT5: n passes per new prefix)
            texts = conditioned_questions([questions[b] for b in rows.tolist()], [passages[b] for b in rows.tolist()],
                                          chosen)
            tokens = self.conditioned_inputs.tokenize(texts, [passages[b] for b in rows.tolist()])
            return self({k: v.to(device) for k, v in tokens.items()})

        return _prefix_memo(w0, rows_scores)

    def select(self, questions: list[str], passages: list[list[PassageText | str]], k: int) -> list[list[int]]:
        """Greedy selection of k candidates per question (hard top-k for a pointwise reranker), best first: one list
        of candidate indices per question (fewer where a question has fewer candidates). Questions and passages as
        in `score`; rows may differ in length (padded with ("", "") internally)."""
        passages = as_pairs(passages)
        n = max(len(row) for row in passages)
        valid = torch.tensor([[i < len(row) for i in range(n)] for row in passages])
        padded = [list(row) + [("", "")] * (n - len(row)) for row in passages]
        device = next(self.model.parameters()).device
        inputs = {key: v.to(device) for key, v in self.tokenize(questions, padded).items()}
        with torch.no_grad():
            picks = greedy(self.step_scorer(inputs, questions, padded), valid.to(device), k).indices
        return [[i for i in row if i >= 0] for row in picks.tolist()]

    def score(self, questions: list[str], passages: list[list[PassageText | str]]) -> torch.Tensor:
        """tokenize + forward on the model's device for B questions with n candidates each, a candidate a (title,
        text) pair or a plain text (no title). Returns w: [B, n] fp32."""
        device = next(self.model.parameters()).device
        return self({k: v.to(device) for k, v in self.tokenize(questions, as_pairs(passages)).items()})

    def shift_parameters(self) -> list[nn.Parameter]:
        """Parameters that add the same constant to every candidate's score. Listwise objectives (G-Rerank's
        softmax over candidates) are invariant to them, so they get exactly zero gradient there."""
        return []

    def settings(self) -> dict[str, Any]:
        """What SETTINGS_FILE holds: kind, max_tokens and the kind's scoring keys."""
        scoring = {key: getattr(self.cfg, key) for key in (*self.scoring_keys, *self.selection_keys)}
        return {"kind": self.kind, "max_tokens": self.cfg.max_tokens, **scoring}

    def save(self, path: str | Path) -> None:
        """Write a plain HF folder (model + tokenizer save_pretrained) plus SETTINGS_FILE. LoRA adapters
        (reranker.lora_rank) are merged into the saved weights (reader_tuning.save_merged, on copies: the live model
        keeps training its adapters), so the folder loads without peft."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_merged(self.model, path)
        self.tokenizer.save_pretrained(path)
        (path / SETTINGS_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Reranker":
        """Rebuild a reranker written by `save`, with the saved kind and scoring settings."""
        settings = json.loads((Path(path) / SETTINGS_FILE).read_text())
        return build_reranker(RerankerSection(name_or_path=str(path), **settings))


class CrossEncoderReranker(Reranker):
    """BERT / XLM-R / BGE-style cross-encoder: w = logits[..., 0] of the pair (question, title + " " + text)."""

    kind = "cross_encoder"
    auto_class = AutoModelForSequenceClassification

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        B, n, L = inputs["input_ids"].shape
        logits = self.model(**{k: v.reshape(B * n, L) for k, v in inputs.items()}).logits  # [B*n, 1]
        return logits[:, 0].float().view(B, n)

    def shift_parameters(self) -> list[nn.Parameter]:
        """The bias of the output layer (the last Linear with one output: BERT `classifier`, XLM-R
        `classifier.out_proj`)."""
        heads = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
        return [heads[-1].bias] if heads and heads[-1].bias is not None else []


class RankT5Reranker(Reranker):
    """RankT5 (Zhuang et al. 2023): w = logit of `cfg.score_token` at the first decoder step.

    Input "Query: {q} Document: {title} {text}"; the decoder sees only its start token.
    """

    kind = "rankt5"
    auto_class = AutoModelForSeq2SeqLM
    scoring_keys = ("score_token",)

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: RerankerSection):
        super().__init__(model, tokenizer, cfg)
        self.score_token_id = self.checked_score_token(cfg, tokenizer, model.config)
        self._freeze_single_step_self_attention()

    @staticmethod
    def checked_score_token(cfg: RerankerSection, tokenizer: Any, config: Any) -> int:
        """The id of cfg.score_token. ValueError when the tokenizer lacks it or its id is outside the vocabulary of
        the model's config."""
        vocab = tokenizer.get_vocab()
        if cfg.score_token not in vocab:
            raise ValueError(
                f"reranker.score_token: the tokenizer has no token '{cfg.score_token}' "
                f"(RankT5 scores with the logit of that token; vocabulary size {len(vocab)})"
            )
        score_token_id = vocab[cfg.score_token]
        if score_token_id >= config.vocab_size:
            raise ValueError(
                f"reranker.score_token: '{cfg.score_token}' has id {score_token_id}, "
                f"outside the model's vocabulary of {config.vocab_size}"
            )
        return score_token_id

    def _freeze_single_step_self_attention(self) -> None:
        """Freeze the decoder self-attention's query/key projections and position bias.

        With one decoder position the self-attention softmax is over a single key, so it equals 1 whatever q, k
        and the bias are: their gradient is exactly 0. Frozen, AdamW's weight decay cannot shrink them either.
        T5-family layout only (decoder.block[i].layer[0].SelfAttention); other layouts keep them trainable.
        """
        decoder = self.model.get_decoder()
        for block in getattr(decoder, "block", []):
            attention = getattr(block.layer[0], "SelfAttention", None)
            if attention is None:
                continue
            for name in ("q", "k", "relative_attention_bias"):
                if isinstance(getattr(attention, name, None), nn.Module):
                    getattr(attention, name).requires_grad_(False)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        B, n, L = inputs["input_ids"].shape
        start = torch.full((B * n, 1), self.model.config.decoder_start_token_id, device=inputs["input_ids"].device)
        logits = self.model(
            input_ids=inputs["input_ids"].reshape(B * n, L),
            attention_mask=inputs["attention_mask"].reshape(B * n, L),
            decoder_input_ids=start,
            use_cache=False,  # one decoder step; a cache would only be built and thrown away
        ).logits  # [B*n, 1, V]
        return logits[:, 0, self.score_token_id].float().view(B, n)


class BiEncoderReranker(Reranker):
    """Dual encoder: w = score_scale * cos(mean_pool(q), mean_pool(d)); one encoding per question, B*n passages."""

    kind = "bi_encoder"
    auto_class = AutoModel
    scoring_keys = ("score_scale",)

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: RerankerSection):
        super().__init__(model, tokenizer, cfg)
        # Mean pooling reads the token states only; a BERT-style pooler on top would get no gradient. Frozen
        # rather than removed, so the exported folder stays a complete AutoModel checkpoint.
        if getattr(model, "pooler", None) is not None:
            model.pooler.requires_grad_(False)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the last hidden states over non-pad tokens, fp32. inputs [N, L] → [N, d]."""
        hidden = self.model(**inputs).last_hidden_state.float()  # [N, L, d]
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        q = self.embed({k[2:]: v for k, v in inputs.items() if k.startswith("q_")})  # [B, d]
        return self._cosine(q, self.embed_passages(inputs))

    def embed_passages(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The candidates' embeddings from the p_* inputs [B, n, L] → [B, n, d] fp32."""
        B, n, L = inputs["p_input_ids"].shape
        return self.embed({k[2:]: v.reshape(B * n, L) for k, v in inputs.items() if k.startswith("p_")}).view(B, n, -1)

    def _cosine(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """w = score_scale * cos(q, d): q [B, d], d [B, n, d] → [B, n]."""
        return self.cfg.score_scale * torch.cosine_similarity(q.unsqueeze(1), d, dim=-1)

    def step_scorer(self, inputs: dict[str, torch.Tensor], questions: list[str],
                    passages: list[list[PassageText]]) -> StepScorer:
        """As Reranker.step_scorer; the candidates are encoded once and each conditional step re-encodes only the
        B conditioned questions (cost per extra step: B query encodings, not B * n pairs)."""
        if not self.cfg.conditional:
            return super().step_scorer(inputs, questions, passages)
        d = self.embed_passages(inputs)  # [B, n, dim], shared by every step
        q0 = self.embed({k[2:]: v for k, v in inputs.items() if k.startswith("q_")})
        w0 = self._cosine(q0, d)
        device = inputs["q_input_ids"].device

        def rows_scores(rows: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
            texts = conditioned_questions([questions[b] for b in rows.tolist()], [passages[b] for b in rows.tolist()],
                                          chosen)
            q = self.embed({k: v.to(device) for k, v in self.conditioned_inputs._encode(texts).items()})
            return self._cosine(q, d[rows])

        return _prefix_memo(w0, rows_scores)


def _prefix_memo(w0: torch.Tensor, rows_scores) -> StepScorer:
    """A step scorer that computes each (row, chosen prefix) once: chosen [B, t] → [B, n], w0 for t = 0; the rows
    whose prefix is new go to rows_scores(rows [m] long, chosen [m, t]) → [m, n] in one batch. Rows already seen
    reuse their scores (the same tensors: gradients add up through every use).

    Every call with t > 0 runs rows_scores exactly once, whatever the memo holds: under ZeRO-3 each forward of the
    encoder all-gathers its parameters (and its backward gathers them again), so every rank must run as many
    forwards as the others. A call whose prefixes were all seen re-scores its first row and adds 0 times the
    result, which keeps that forward's backward in the graph; the returned values are unchanged."""
    memo: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def score(chosen: torch.Tensor) -> torch.Tensor:
        if chosen.shape[1] == 0:
            return w0
        keys = [(b, tuple(row)) for b, row in enumerate(chosen.tolist())]
        new = [i for i, key in enumerate(keys) if key not in memo]
        if new:
            rows = torch.tensor(new, dtype=torch.long, device=chosen.device)
            for i, w in zip(new, rows_scores(rows, chosen[rows])):
                memo[keys[i]] = w
            return torch.stack([memo[key] for key in keys])
        rows = torch.zeros(1, dtype=torch.long, device=chosen.device)
        return torch.stack([memo[key] for key in keys]) + 0.0 * rows_scores(rows, chosen[rows]).sum()

    return score


def as_pairs(passages: list[list[PassageText | str]]) -> list[list[PassageText]]:
    """Candidates as (title, text) pairs: a plain string is a text without a title. TypeError names the question
    and candidate of anything else."""
    out = []
    for b, row in enumerate(passages):
        pairs = []
        for i, p in enumerate(row):
            if isinstance(p, str):
                pairs.append(("", p))
            elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
                pairs.append((p[0], p[1]))
            else:
                raise TypeError(f"reranker: candidate {i} of question {b} is {type(p).__name__} {p!r:.60}; expected "
                                "a passage text or a (title, text) pair of strings")
        out.append(pairs)
    return out


class CausalLMReranker(Reranker):
    """Decoder-only LLM reranker (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2 form): w = logit(yes_token)
    - logit(no_token) at the last token of the instruction prompt (inputs.CausalLMRerankerInputs), in fp32. No new
    parameters: the checkpoint stays a plain causal LM. An output-layer bias cancels in the difference, so no
    parameter shifts every candidate alike (shift_parameters is empty)."""

    kind = "causal_lm"
    auto_class = AutoModelForCausalLM
    scoring_keys = ("instruction", "yes_token", "no_token")

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: RerankerSection):
        super().__init__(model, tokenizer, cfg)
        self.yes_id, self.no_id = self.checked_answer_tokens(cfg, tokenizer, model.config)

    @staticmethod
    def checked_answer_tokens(cfg: RerankerSection, tokenizer: Any, config: Any) -> tuple[int, int]:
        """(id of cfg.yes_token, id of cfg.no_token). ValueError naming the key and the token when one is not
        exactly one token of the tokenizer, lies outside the model's vocabulary, or both are the same token."""
        ids = {}
        for key in ("yes_token", "no_token"):
            token = getattr(cfg, key)
            encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ValueError(f"reranker.{key}: '{token}' is {len(encoded)} tokens of the tokenizer ({encoded}); "
                                 "the score reads the logit of exactly one token: name a single vocabulary entry")
            if encoded[0] >= config.vocab_size:
                raise ValueError(f"reranker.{key}: '{token}' has id {encoded[0]}, outside the model's vocabulary of "
                                 f"{config.vocab_size}")
            ids[key] = encoded[0]
        if ids["yes_token"] == ids["no_token"]:
            raise ValueError(f"reranker.yes_token / reranker.no_token: '{cfg.yes_token}' and '{cfg.no_token}' are the "
                             f"same token ({ids['yes_token']}): their log-odds would be 0")
        return ids["yes_token"], ids["no_token"]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """inputs: input_ids, attention_mask [B, n, L], padded on either side (tokenize pads left). Each row is read
        at its last real token, with positions counted from its first real token. Returns w: [B, n] fp32."""
        B, n, L = inputs["input_ids"].shape
        ids = inputs["input_ids"].reshape(B * n, L)
        mask = inputs["attention_mask"].reshape(B * n, L).long()
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        last = L - 1 - mask.flip(1).argmax(1)  # [B*n] index of each row's last real token
        left_padded = bool((last == L - 1).all())  # then only the last position's logits are computed
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                            logits_to_keep=1 if left_padded else 0).logits  # [B*n, 1 or L, V]
        logits = (logits[:, -1] if left_padded else logits[torch.arange(B * n, device=ids.device), last]).float()
        return (logits[:, self.yes_id] - logits[:, self.no_id]).view(B, n)


RERANKERS: dict[str, type[Reranker]] = {
    cls.kind: cls for cls in (CrossEncoderReranker, RankT5Reranker, BiEncoderReranker, CausalLMReranker)
}


def reranker_inputs(kind: str, tokenizer: Any, cfg: RerankerSection, max_tokens: int) -> RerankerInputs:
    """The kind's input builder (gr_train.inputs.RERANKER_INPUTS) with a budget of max_tokens; causal_lm's takes
    reranker.instruction."""
    extra = {"instruction": cfg.instruction} if kind == "causal_lm" else {}
    return RERANKER_INPUTS[kind](tokenizer, max_tokens, **extra)


def build_reranker(cfg: RerankerSection, tokenizer: Any = None) -> Reranker:
    """Reranker from `cfg` (config.RerankerSection): fp32, in eval mode, trainable. Seeds are the caller's job.

    name_or_path set: from_pretrained (local folder or hub id); tokenizer from cfg.tokenizer_path, else the same
    folder, else the `tokenizer` argument. A folder written by Reranker.save must agree with cfg on kind and
    scoring settings. name_or_path None: random weights from a tiny config overridden by cfg.model_config
    (which may name a `model_type`); the tokenizer (cfg.tokenizer_path or the argument) sets the vocabulary size.
    ValueError when reranker.max_tokens exceeds the model's position limit (lengths.position_limit), and (causal_lm)
    when reranker.yes_token / no_token is not one token. reranker.lora_rank > 0: only LoRA adapters on
    reranker.lora_targets train (reader_tuning.inject_lora; ConfigError naming reranker.lora_targets when they
    cannot apply).
    """
    cls = _family(cfg)
    tokenizer = _tokenizer(cfg, cls, tokenizer)
    if cfg.name_or_path:
        extra = {"num_labels": 1} if cls is CrossEncoderReranker else {}
        # dtype: transformers 5 defaults to "auto" (a bf16 checkpoint would load as bf16); trainable weights stay fp32.
        model = cls.auto_class.from_pretrained(cfg.name_or_path, dtype=torch.float32, **extra)
    else:
        model = cls.auto_class.from_config(_scratch_config(cfg, cls, tokenizer))
    # Every pair (cross-encoder) or text (bi-encoder) is cut to max_tokens; it must fit the model's positions.
    check_budget("reranker", _budgets(cfg), position_limit(model.config))
    reranker = cls(model, tokenizer, cfg)
    if cfg.lora_rank:  # after the kind's own freezing: only the adapters train
        inject_lora(model, cfg.lora_rank, cfg.lora_alpha, list(cfg.lora_targets), "reranker")
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    # from_pretrained returns eval mode and from_config train mode; one mode for both, so that building twice
    # gives the same scores. The training recipe calls .train().
    return reranker.eval()


def build_reranker_inputs(cfg: RerankerSection, tokenizer: Any = None) -> RerankerInputs:
    """The reranker's input builder (gr_train.inputs) without the model: the tokenizer build_reranker(cfg,
    tokenizer) would use and the same checks (saved settings, reranker.max_tokens against the position limit of
    the model's config), so its tokenize gives the same ids; no weights are loaded and no modeling code is imported
    (models.build_inputs). Raises ValueError as build_reranker does."""
    cls = _family(cfg)
    tokenizer = _tokenizer(cfg, cls, tokenizer)
    config = AutoConfig.from_pretrained(cfg.name_or_path) if cfg.name_or_path else _scratch_config(cfg, cls, tokenizer)
    check_budget("reranker", _budgets(cfg), position_limit(config))
    if cls is RankT5Reranker:
        cls.checked_score_token(cfg, tokenizer, config)
    if cls is CausalLMReranker:
        cls.checked_answer_tokens(cfg, tokenizer, config)
    return reranker_inputs(cls.kind, tokenizer, cfg, cfg.max_tokens)


def _budgets(cfg: RerankerSection) -> dict[str, int]:
    """The token budget check_budget holds against the model's positions: max_tokens, and the conditioned inputs'
    one when the reranker is conditional."""
    if cfg.conditional:
        return {"reranker.conditional_max_tokens": cfg.condition_tokens()}
    return {"reranker.max_tokens": cfg.max_tokens}


def _family(cfg: RerankerSection) -> type[Reranker]:
    if cfg.kind not in RERANKERS:
        raise ValueError(f"reranker.kind: unknown '{cfg.kind}' ({' | '.join(RERANKERS)})")
    return RERANKERS[cfg.kind]


def _tokenizer(cfg: RerankerSection, cls: type[Reranker], tokenizer: Any) -> Any:
    """The tokenizer of build_reranker's rules; a saved folder's settings checked against cfg on the way."""
    if cfg.name_or_path:
        _check_saved_settings(cfg, cls)
        return _pretrained_tokenizer(cfg, tokenizer)
    if cfg.tokenizer_path:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_path)
    if tokenizer is None:
        raise ValueError(
            "reranker: building from reranker.model_config needs a tokenizer (it sets the vocabulary size): "
            "set reranker.tokenizer_path or pass tokenizer= to build_reranker"
        )
    return tokenizer


def _check_saved_settings(cfg: RerankerSection, cls: type[Reranker]) -> None:
    """A folder written by Reranker.save computes w with its saved kind and settings; cfg must not disagree. One
    exception: a pointwise folder (conditional false) loads as a conditional reranker, whose first step is that
    very scorer (the start of conditional training from a pretrained pointwise reranker); the other way round is
    refused, as it would score with a policy other than the one trained."""
    settings_path = Path(cfg.name_or_path) / SETTINGS_FILE
    if not settings_path.is_file():
        return
    saved = json.loads(settings_path.read_text())
    keys = ("kind", *cls.scoring_keys, *cls.selection_keys)
    if saved.get("conditional") is False and cfg.conditional:
        keys = tuple(k for k in keys if k not in cls.selection_keys)
        log.info("reranker: %s was saved pointwise; it is step 1 of the conditional reranker (reranker.conditional)",
                 cfg.name_or_path)
    for key in keys:
        if key in saved and saved[key] != getattr(cfg, key):
            raise ValueError(
                f"reranker.{key} is {getattr(cfg, key)!r} but {cfg.name_or_path} was saved with {saved[key]!r}: "
                f"set reranker.{key}={saved[key]}"
            )


def _pretrained_tokenizer(cfg: RerankerSection, tokenizer: Any) -> Any:
    if cfg.tokenizer_path:
        return AutoTokenizer.from_pretrained(cfg.tokenizer_path)
    folder = Path(cfg.name_or_path)
    if folder.is_dir():
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return AutoTokenizer.from_pretrained(folder)
    else:  # a hub id
        try:
            return AutoTokenizer.from_pretrained(cfg.name_or_path)
        except OSError:
            if tokenizer is None:
                raise
    if tokenizer is None:
        raise ValueError(
            f"reranker: no tokenizer in '{cfg.name_or_path}': set reranker.tokenizer_path or pass tokenizer="
        )
    return tokenizer


def _scratch_config(cfg: RerankerSection, cls: type[Reranker], tokenizer: Any):
    """HF config: tiny defaults for the kind ← cfg.model_config; vocabulary and special ids from the tokenizer."""
    overrides = dict(cfg.model_config)
    model_type = overrides.pop("model_type", {RankT5Reranker: "t5", CausalLMReranker: "llama"}.get(cls, "bert"))
    vocab_size = overrides.pop("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"reranker.model_config.vocab_size: {vocab_size} < the tokenizer's {len(tokenizer)} tokens")
    if tokenizer.pad_token_id is None and cls is not CausalLMReranker:  # causal_lm pads with eos (masked out)
        raise ValueError("reranker: the tokenizer has no pad token (needed to batch candidates)")
    special = {"pad_token_id": tokenizer.pad_token_id}
    if cls is RankT5Reranker:
        # T5 convention: the decoder starts from the pad token.
        special.update(eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    if cls is CrossEncoderReranker:
        special["num_labels"] = 1
    if cls is CausalLMReranker:
        special.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    defaults = {RankT5Reranker: TINY_RANKT5, CausalLMReranker: TINY_CAUSAL_LM}.get(cls, TINY_ENCODER)
    return AutoConfig.for_model(model_type, **{**defaults, **special, **overrides, "vocab_size": vocab_size})


def _enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing on every layer, non-reentrant (recomputes in backward; active in train mode only)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns until v6
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_word_tokenizer(texts: Iterable[str], style: str = "bert", extra_ids: int = 100) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer trained on `texts`, built without downloads (tests, bench/).

    style "bert": [PAD] [UNK] [CLS] [SEP]; single "[CLS] A [SEP]", pair "[CLS] A [SEP] B [SEP]" with token type ids.
    style "t5": <pad> </s> <unk> and <extra_id_0> .. <extra_id_{extra_ids-1}>; "A </s>" (RankT5 scores with
    <extra_id_10>, so extra_ids <= 10 gives a tokenizer without it). Lower-cases; unknown words map to the unk token.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    if style == "bert":
        pad, unk, specials = "[PAD]", "[UNK]", ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    elif style == "t5":
        pad, unk, specials = "<pad>", "<unk>", ["<pad>", "</s>", "<unk>"]
        specials += [f"<extra_id_{i}>" for i in range(extra_ids)]
    else:
        raise ValueError(f"build_word_tokenizer: unknown style '{style}' (bert | t5)")
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    ids = {s: tok.token_to_id(s) for s in specials}
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        # transformers 5 tokenizers return token_type_ids only when asked to by model_input_names.
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token=pad,
            unk_token=unk,
            cls_token="[CLS]",
            sep_token="[SEP]",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", ids["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        unk_token=unk,
        eos_token="</s>",
        extra_special_tokens=specials[3:],
        model_input_names=["input_ids", "attention_mask"],
    )
