"""Frozen readers that turn a passage mask M into an answer loss: FiD (T5) and decoder-only HF causal LMs.

Every reader splits its forward in two (docs/design.md#cost-structure):
  1. `encode_passages(inputs)` runs the n*L passage tokens under torch.no_grad() (passage states depend only on
     the passage), and
  2. `answer_loss(states, inputs, log_M)` runs the T answer tokens with autograd, attending to the cached passage
     states with `log_M[b, i]` added to the attention logits of every key token of passage i (DMA).
`answer_loss_naive` does both under autograd; it exists for benchmarks and equivalence tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    Cache,
    DynamicCache,
    EncoderDecoderCache,
    PreTrainedTokenizerFast,
    T5Config,
)
from transformers.cache_utils import DynamicLayer

from gr_train.attention import (
    NEG_BIAS,
    answer_bias,
    bias_grad_kernels,
    causal_bias,
    cross_attention_bias,
    fused_bias,
    passage_key_bias,
    to_attention_dtype,
)
from gr_train.data import PassageText
from gr_train.inputs import CausalLMInputs, FiDInputs
from gr_train.lengths import Truncations, position_limit

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration


class Reader(nn.Module):
    """Interface shared by all readers. Shapes: B questions, n passages, L passage tokens, T target tokens.

    `log_M` is always [B, n] fp32 (see gumbel.log_mask): log of the clamped mask, NEG_BIAS for padded candidates.
    """

    tokenizer: Any
    inputs: Any  # the family's input builder (gr_train.inputs): tokenize delegates to it
    # Parameters read outside the forward of the module that owns them (e.g. a tied output projection): an engine
    # that shards parameters and gathers them per module forward (ZeRO-3) must keep these whole.
    params_used_outside_forward: tuple[str, ...] = ()

    @classmethod
    def build_inputs(cls, cfg, tokenizer=None) -> Any:
        """The family's input builder (gr_train.inputs) for `cfg` (config.ReaderSection) without the model: the
        tokenizer and the sizes of the model's config that `build(cfg, tokenizer)` would use, so its tokenize gives
        the same ids; no weights are loaded and no modeling code is imported (models.build_inputs)."""
        raise NotImplementedError

    @property
    def truncations(self) -> Truncations:
        """What tokenize's truncation removed (lengths.Truncations), logged by the recipe."""
        return self.inputs.truncations

    def answer_pass_layers(self) -> list[nn.Module]:
        """The layers that run with autograd in the answer pass, for activation checkpointing
        (runtime.reader_checkpointing). Raises ValueError for readers that do not support it."""
        raise ValueError(f"runtime.reader_checkpointing: not supported for {type(self).__name__} "
                         "(fid_t5, causal_lm and demo_fid readers only)")

    def tokenize(
        self, questions: list[str], passages: list[list[PassageText]], targets: list[str] | None = None, **kwargs
    ) -> dict[str, torch.Tensor]:
        """Build model inputs (`self.inputs.tokenize`, gr_train.inputs). Every question has the same number n of
        passages (callers pad with ("", "") and mask them through log_M). An empty passage list means "no
        passages": the reader encodes the question alone as a single passage. Targets are required for
        answer_loss, not for generate."""
        return self.inputs.tokenize(questions, passages, targets, **kwargs)

    def encode_passages(self, inputs: dict[str, torch.Tensor]) -> Any:
        """Passage states under torch.no_grad(); the result holds no autograd graph."""
        raise NotImplementedError

    def answer_logits(self, states: Any, inputs: dict[str, torch.Tensor], log_M: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of the target tokens, [B, T, V] (T = inputs["labels"].shape[1]), differentiable
        w.r.t. log_M [B, n]: the family's answer pass over the cached passage states."""
        raise NotImplementedError

    def answer_loss(self, states: Any, inputs: dict[str, torch.Tensor], log_M: torch.Tensor) -> torch.Tensor:
        """Token-mean cross-entropy of the target per question, [B] fp32, differentiable w.r.t. log_M: answer_logits
        against inputs["labels"] ([B, T] long, -100 = ignored)."""
        return token_mean_ce(self.answer_logits(states, inputs, log_M), inputs["labels"])

    def answer_loss_naive(self, inputs: dict[str, torch.Tensor], log_M: torch.Tensor) -> torch.Tensor:
        """Same value as answer_loss(encode_passages(inputs), inputs, log_M), with the passage encoding under
        autograd too (the naive path the benchmark compares against)."""
        raise NotImplementedError

    def passage_attention(self, states: Any, inputs: dict[str, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """Attention mass of the answer on each passage, every valid passage visible (Atlas ADist), [B, n] fp32:
        the attention probabilities of the target tokens' queries summed over passage i's key tokens, averaged over
        layers, heads and target tokens. Without grad. valid: [B, n] bool (False = padded candidate, masked)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its attention (objective adist)")

    def generate(
        self, states: Any, inputs: dict[str, torch.Tensor], log_M: torch.Tensor | None = None, max_new_tokens: int = 8
    ) -> list[str]:
        """Greedy answers, one string per question; log_M None = every passage fully visible."""
        raise NotImplementedError


# Tiny architectures for readers built from scratch (tests, debugging); cfg.model_config overrides any key.
TINY_FID_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0)
_TINY_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512)
# Other model types get no tiny defaults: give their sizes in cfg.model_config.
TINY_CAUSAL = {
    "llama": _TINY_LLAMA_LIKE,
    "qwen2": _TINY_LLAMA_LIKE,
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}


# reader.dtype → torch dtype; None (not resolved against runtime.precision, e.g. a bare ReaderSection) = fp32.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def reader_dtype(cfg) -> torch.dtype:
    """The torch dtype of `cfg.dtype` (config.ReaderSection): the dtype a reader is built and loaded in, whatever
    dtype its checkpoint was saved in."""
    return DTYPES[cfg.dtype or "fp32"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer that needs no download and no training: <pad>=0, </s>=1, <unk>=2, then the 256 bytes.

    For readers built from scratch (tests, debugging). Any string round-trips through encode/decode.
    """
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def token_mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-question mean cross-entropy of the target tokens.

    logits [B, T, V], labels [B, T] (-100 = ignore) → [B] fp32.
    """
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B, T]
    return ce.sum(-1) / (labels != -100).sum(-1).clamp_min(1)


def visible_log_mask(valid: torch.Tensor) -> torch.Tensor:
    """log M of a 0/1 mask: 0 on valid candidates, NEG_BIAS on the rest. valid [B, n] bool → [B, n] fp32."""
    return torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill(~valid, NEG_BIAS)


def attention_mass(attentions, token_mask: torch.Tensor, query_rows: torch.Tensor, first_key: int = 0) -> torch.Tensor:
    """Mean attention mass per passage (ADist), from one attention-probability tensor per layer.

    attentions: per layer [B, heads, Q, S], keys first_key .. first_key + n*L - 1 are the passages side by side;
    token_mask: [B, n, L] bool; query_rows: [B, Q] bool, the query positions to average over (target tokens).
    → [B, n] fp32: sum over passage i's tokens, mean over layers, heads and the chosen query rows.
    """
    B, n, L = token_mask.shape
    rows = query_rows.float()
    total = torch.zeros(B, n, device=token_mask.device)
    for a in attentions:
        a = a.float()[..., first_key : first_key + n * L].mean(1)  # [B, Q, n*L], mean over heads
        per_passage = (a * token_mask.view(B, 1, n * L)).view(B, -1, n, L).sum(-1)  # [B, Q, n]
        total = total + (per_passage * rows[..., None]).sum(1) / rows.sum(1, keepdim=True).clamp_min(1)
    return total / len(attentions)


def _require_attentions(attentions, reader) -> tuple:
    if not attentions or attentions[0] is None:
        raise RuntimeError(f"{type(reader).__name__}: the model returned no attention probabilities; objective adist "
                           "needs reader.attn_implementation=eager")
    return attentions


# -- answers: how an answer is read back from what a reader generates (extract_answer, used for EM/F1) ---------

# Leading phrases instruct models put before the answer ("The answer is: X", "Answer - X"), removed case-insensitively.
_ANSWER_LEAD = re.compile(r"^\s*(?:so,?\s+)?(?:the\s+)?(?:final\s+|short\s+)?answer(?:\s+is\b\s*[:\-]?|\s*[:\-])\s*",
                          re.I)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*"


def extract_answer(text: str) -> str:
    """The answer in a generated string: its first non-empty line, without a leading "The answer is" / "Answer:",
    surrounding quotes or a trailing period. "The answer is: \"Paris\"." → "Paris"; plain answers pass unchanged."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _ANSWER_LEAD.sub("", line, count=1).strip()
    line = line.rstrip(".").strip().strip(_QUOTES).strip()
    return line.rstrip(".").strip()


def _greedy(logits: torch.Tensor, step, eos_id: int, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding loop shared by the readers. logits [B, V] predict the first token; step(token [B]) feeds a
    token and returns the next logits. Stops when every row has produced eos. → [B, <= max_new_tokens] long,
    eos repeated after a row's eos (decoded away as a special token)."""
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    generated = []
    for i in range(max_new_tokens):
        token = logits.argmax(-1).masked_fill(done, eos_id)
        generated.append(token)
        done = done | (token == eos_id)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = step(token)
    return torch.stack(generated, dim=1)


def _load_tokenizer(cfg, tokenizer):
    """The given tokenizer, else cfg.tokenizer_path's, else the one saved with cfg.name_or_path, else
    byte_level_tokenizer()."""
    if tokenizer is None:
        path = cfg.tokenizer_path or cfg.name_or_path
        tokenizer = AutoTokenizer.from_pretrained(path) if path else byte_level_tokenizer()
    return tokenizer


@dataclass
class FiDStates:
    """FiD passage states from encode_passages; no autograd graph."""

    hidden: torch.Tensor  # [B, n*L, d] encoder outputs, passages side by side
    token_mask: torch.Tensor  # [B, n, L] bool


class FiDT5Reader(Reader):
    """FiD on a T5 encoder-decoder (Izacard & Grave 2021); the DMA bias goes into the decoder cross-attention.

    Each "question: q title: t context: x" is encoded independently ([B*n, L] → [B, n*L, d]); the decoder
    cross-attends to all n*L states with `log M_i` added on passage i's keys. The bias is passed as a 4D float
    `attention_mask` together with `encoder_outputs`, so T5 never runs its encoder on it and the decoder's
    create_bidirectional_mask returns it as-is (masking_utils._preprocess_mask_arguments); eager adds it to the
    logits after the (zero) cross-attention position bias, sdpa folds it into that bias (create_position_bias_mask).
    """

    def __init__(self, model: T5ForConditionalGeneration, tokenizer, passage_max_tokens: int, answer_max_tokens: int,
                 answer_eos: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.inputs = FiDInputs(tokenizer, passage_max_tokens, answer_max_tokens, answer_eos)
        config = model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None and model.generation_config is not None:
            start = model.generation_config.decoder_start_token_id
        # T5 starts decoding from the pad token; transformers 5 configs built from scratch no longer set it.
        self.decoder_start_id = config.pad_token_id if start is None else start

    @classmethod
    def build(cls, cfg, tokenizer=None) -> "FiDT5Reader":
        """From `cfg.name_or_path` (hub id or local folder), else a random T5 from TINY_FID_T5 + cfg.model_config; in
        reader_dtype(cfg)."""
        tokenizer = _load_tokenizer(cfg, tokenizer)
        if cfg.name_or_path:
            # Imported here: T5's modeling code (with transformers' generation and torch.distributed machinery) takes
            # seconds to import, and models.build_inputs (the preprocessing workers) must not pay for it.
            from transformers import T5ForConditionalGeneration

            model = T5ForConditionalGeneration.from_pretrained(
                cfg.name_or_path, attn_implementation=cfg.attn_implementation, dtype=reader_dtype(cfg)
            )
        else:
            ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
            config = T5Config(**{**TINY_FID_T5, **ids, **cfg.model_config})
            model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation=cfg.attn_implementation,
                                                      dtype=reader_dtype(cfg))
        return cls(model, tokenizer, cfg.passage_max_tokens, cfg.answer_max_tokens, cfg.answer_eos)

    @classmethod
    def build_inputs(cls, cfg, tokenizer=None) -> FiDInputs:
        return FiDInputs(_load_tokenizer(cfg, tokenizer), cfg.passage_max_tokens, cfg.answer_max_tokens, cfg.answer_eos)

    def _encode(self, inputs) -> FiDStates:
        ids, mask = inputs["passage_ids"], inputs["passage_mask"]
        B, n, L = ids.shape
        hidden = self.model.encoder(input_ids=ids.view(B * n, L), attention_mask=mask.view(B * n, L)).last_hidden_state
        return FiDStates(hidden=hidden.reshape(B, n * L, -1), token_mask=mask)

    def answer_pass_layers(self) -> list[nn.Module]:
        """The T5 decoder's blocks (the encoder runs under no_grad)."""
        return list(self.model.decoder.block)

    def encode_passages(self, inputs) -> FiDStates:
        """Encoder over the B*n passages under no_grad → FiDStates(hidden [B, n*L, d], token_mask [B, n, L])."""
        with torch.no_grad():
            return self._encode(inputs)

    def _cross_bias(self, states: FiDStates, log_M: torch.Tensor) -> torch.Tensor:
        # sdpa wants the float mask in the query dtype; in fp32 this is a no-op.
        return to_attention_dtype(cross_attention_bias(log_M, states.token_mask), states.hidden.dtype)

    def _decoder_input_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the start token, then the target shifted right (pads for -100). [B, T] → [B, T]."""
        start = torch.full_like(labels[:, :1], self.decoder_start_id)
        ids = torch.cat([start, labels[:, :-1]], dim=1)
        return ids.masked_fill(ids == -100, self.model.config.pad_token_id)

    def answer_logits(self, states: FiDStates, inputs, log_M: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits of the target, [B, T, V], differentiable w.r.t. log_M [B, n]."""
        return self._decoder_pass(states, inputs, log_M).logits

    def _decoder_pass(self, states: FiDStates, inputs, log_M: torch.Tensor, **kwargs):
        """Teacher-forced decoder over the cached encoder states with log_M on passage i's keys → model output."""
        bias = self._cross_bias(states, log_M)
        with bias_grad_kernels(bias):
            return self.model(
                encoder_outputs=(states.hidden,),
                attention_mask=bias,
                decoder_input_ids=self._decoder_input_ids(inputs["labels"]),
                use_cache=False,
                **kwargs,
            )

    @torch.no_grad()
    def passage_attention(self, states: FiDStates, inputs, valid: torch.Tensor) -> torch.Tensor:
        """Decoder cross-attention mass per passage (see Reader.passage_attention), [B, n]."""
        out = self._decoder_pass(states, inputs, visible_log_mask(valid), output_attentions=True)
        return attention_mass(_require_attentions(out.cross_attentions, self), states.token_mask,
                              inputs["labels"] != -100)

    def answer_loss_naive(self, inputs, log_M: torch.Tensor) -> torch.Tensor:
        return token_mean_ce(self.answer_logits(self._encode(inputs), inputs, log_M), inputs["labels"])

    @torch.no_grad()
    def generate_ids(self, states: FiDStates, inputs, log_M=None, max_new_tokens: int = 8) -> torch.Tensor:
        """Greedy decoding with the cross-attention bias, one token per step on a growing decoder cache
        (model.generate refuses a 4D attention_mask: generation/utils.py, "must be 2D"). → [B, <= max_new_tokens]."""
        B, n, _ = states.token_mask.shape
        if log_M is None:
            log_M = torch.zeros(B, n, device=states.hidden.device)
        bias = self._cross_bias(states, log_M)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

        def step(token: torch.Tensor) -> torch.Tensor:
            out = self.model(
                encoder_outputs=(states.hidden,),
                attention_mask=bias,
                decoder_input_ids=token[:, None],
                cache=cache,
                use_cache=True,
            )
            return out.logits[:, -1]

        start = torch.full((B,), self.decoder_start_id, dtype=torch.long, device=states.hidden.device)
        return _greedy(step(start), step, self.tokenizer.eos_token_id, max_new_tokens)

    def generate(self, states: FiDStates, inputs, log_M=None, max_new_tokens: int = 8) -> list[str]:
        ids = self.generate_ids(states, inputs, log_M, max_new_tokens)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


@dataclass
class PassageCache:
    """Decoder-only passage states from encode_passages: per-layer keys/values of all passages, no autograd graph."""

    keys: tuple[torch.Tensor, ...]  # per layer [B, kv_heads, n*L, head_dim], positions 0..L-1 within each passage
    values: tuple[torch.Tensor, ...]  # per layer [B, kv_heads, n*L, head_dim]
    token_mask: torch.Tensor  # [B, n, L] bool

    def read_only_cache(self) -> "ReadOnlyPassageCache":
        """These states as a cache that the answer pass reads and never extends (ReadOnlyPassageCache); no copy."""
        return ReadOnlyPassageCache(self.keys, self.values)

    def fresh_cache(self) -> DynamicCache:
        """A new Cache holding these states, for decoding: it appends each new token's keys, so each call gets its
        own (baselines run several answer passes on one encoding). No config: every layer a full DynamicLayer, i.e.
        sliding-window layers would see all passages too."""
        return DynamicCache(ddp_cache_data=list(zip(self.keys, self.values)))


class ReadOnlyPassageCache(Cache):
    """The passage K/V given to every layer of the teacher-forced answer pass as a read-only input.

    `update(k, v, layer)` returns [passage K/V of that layer; k, v] (concatenated on the sequence axis) and stores
    nothing. So one instance serves any number of answer passes, and a layer that activation checkpointing
    recomputes in backward (runtime.checkpoint_answer_pass) sees exactly the keys its forward saw; a DynamicCache
    would append the answer's keys a second time. Not for decoding token by token (PassageCache.fresh_cache).
    keys, values: per layer [B, kv_heads, n*L, head_dim].
    """

    def __init__(self, keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...]):
        layers = []
        for k, v in zip(keys, values):
            layer = DynamicLayer()
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v  # the passage states themselves, not a copy
            layers.append(layer)
        super().__init__(layers=layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


class CausalLMReader(Reader):
    """Any HF decoder-only LM (Llama, Qwen2, GPT-2, ...) reading passages encoded in parallel.

    Passages ("title: t context: x", [B*n, L]) are encoded like separate documents: positions 0..L-1 each, causal
    attention within the passage only; their per-layer K,V are laid side by side ([B, kv_heads, n*L, head_dim]).
    The query (inputs.query_prompts: "question: q\\nanswer:", or the model's chat template with reader.prompt=chat;
    left-padded, then target tokens + eos unless reader.answer_eos is false) continues at position L, attending
    causally to itself and to every passage token with `log M_i` added on passage i's keys. Both passes use a
    4D float `attention_mask`, which transformers uses verbatim (masking_utils._preprocess_mask_arguments) with
    eager and sdpa, gradient included.
    """

    def __init__(self, model, tokenizer, passage_max_tokens: int, answer_max_tokens: int, prompt_max_tokens: int = 0,
                 prompt: str = "plain", answer_eos: bool = True, instruction: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.position_limit = position_limit(model.config)
        self.inputs = CausalLMInputs(tokenizer, self.position_limit, passage_max_tokens, answer_max_tokens,
                                     prompt_max_tokens, prompt, answer_eos, instruction)

    @classmethod
    def build(cls, cfg, tokenizer=None) -> "CausalLMReader":
        """From `cfg.name_or_path` (hub id or local folder), else a random model of `model_config["model_type"]`
        (llama | qwen2 | gpt2 | any AutoConfig type; default llama) from TINY_CAUSAL + cfg.model_config; in
        reader_dtype(cfg)."""
        tokenizer = _load_tokenizer(cfg, tokenizer)
        if cfg.name_or_path:
            model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, attn_implementation=cfg.attn_implementation,
                                                         dtype=reader_dtype(cfg))
        else:
            model = AutoModelForCausalLM.from_config(cls.scratch_config(cfg, tokenizer),
                                                     attn_implementation=cfg.attn_implementation,
                                                     dtype=reader_dtype(cfg))
        return cls(model, tokenizer, cfg.passage_max_tokens, cfg.answer_max_tokens, cfg.prompt_max_tokens,
                   cfg.prompt, cfg.answer_eos, cfg.instruction)

    @staticmethod
    def scratch_config(cfg, tokenizer):
        """The HF config of a reader built from scratch: `model_config["model_type"]` (default llama) with
        TINY_CAUSAL's sizes for it ← cfg.model_config; vocabulary and special ids from the tokenizer."""
        overrides = dict(cfg.model_config)
        model_type = overrides.pop("model_type", "llama")
        ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return AutoConfig.for_model(model_type, **{**TINY_CAUSAL.get(model_type, {}), **ids, **overrides})

    @classmethod
    def build_inputs(cls, cfg, tokenizer=None) -> CausalLMInputs:
        tokenizer = _load_tokenizer(cfg, tokenizer)
        if cfg.name_or_path:
            config = AutoConfig.from_pretrained(cfg.name_or_path)
        else:
            config = cls.scratch_config(cfg, tokenizer)
        return CausalLMInputs(tokenizer, position_limit(config), cfg.passage_max_tokens, cfg.answer_max_tokens,
                              cfg.prompt_max_tokens, cfg.prompt, cfg.answer_eos, cfg.instruction)

    def answer_pass_layers(self) -> list[nn.Module]:
        """The decoder layers (transformers' GradientCheckpointingLayer modules: LlamaDecoderLayer, Qwen2DecoderLayer,
        GPT2Block, ...). Each reads the passage K/V as a read-only input (ReadOnlyPassageCache), so a recompute in
        backward sees what the forward saw. Passage encoding runs under no_grad and is not recomputed."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            raise ValueError(f"runtime.reader_checkpointing: {type(self.model).__name__} has no decoder layers that "
                             "transformers marks for checkpointing (GradientCheckpointingLayer)")
        return layers

    def _mask(self, bias: torch.Tensor) -> torch.Tensor:
        # sdpa wants the float mask in the query dtype; in fp32 this is a no-op.
        return to_attention_dtype(bias, self.model.dtype)

    def encode_passages(self, inputs) -> PassageCache:
        """Block-causal prefill of the B*n passages under no_grad → PassageCache, K,V [B, kv_heads, n*L, head_dim]."""
        ids, mask = inputs["passage_ids"], inputs["passage_mask"]
        B, n, L = ids.shape
        positions = torch.arange(L, device=ids.device).expand(B * n, L)
        with torch.no_grad():
            # The base model: no LM head over the n*L passage tokens.
            out = self.model.base_model(
                input_ids=ids.view(B * n, L),
                attention_mask=self._mask(causal_bias(mask.view(B * n, L))),
                position_ids=positions,
                use_cache=True,
            )
        keys, values = [], []
        for layer in out.cache.layers:
            k, v = layer.keys, layer.values  # [B*n, kv_heads, L, head_dim]
            _, h, _, d = k.shape
            keys.append(k.view(B, n, h, L, d).transpose(1, 2).reshape(B, h, n * L, d))
            values.append(v.view(B, n, h, L, d).transpose(1, 2).reshape(B, h, n * L, d))
        return PassageCache(keys=tuple(keys), values=tuple(values), token_mask=mask)

    @staticmethod
    def _query(inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """[prompt, target] → ids, mask [B, P + T]."""
        ids = torch.cat([inputs["prompt_ids"], inputs["target_ids"]], dim=1)
        return ids, torch.cat([inputs["prompt_mask"], inputs["target_mask"]], dim=1)

    @staticmethod
    def _query_positions(query_mask: torch.Tensor, L: int) -> torch.Tensor:
        """The query continues after a passage: its first real token is at position L. [B, T] → [B, T] long."""
        return L + (query_mask.long().cumsum(-1) - 1).clamp_min(0)

    def _target_logits(self, logits: torch.Tensor, inputs) -> torch.Tensor:
        """Logits over the query → the ones predicting target tokens: positions P-1 .. P+T-2. → [B, T, V]."""
        P, T = inputs["prompt_ids"].shape[1], inputs["target_ids"].shape[1]
        return logits[:, P - 1 : P + T - 1]

    def answer_logits(self, states: PassageCache, inputs, log_M: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of the target tokens, [B, T, V], differentiable w.r.t. log_M [B, n]."""
        if self.model.is_activation_checkpointing and self.model.training:
            # Checkpointed layers silently drop the cache in training mode (modeling_layers.GradientCheckpointingLayer),
            # so the answer would not see the passages.
            raise RuntimeError("answer_loss with gradient checkpointing needs reader.eval(); or use answer_loss_naive")
        return self._target_logits(self._answer_pass(states, inputs, log_M).logits, inputs)

    def _answer_pass(self, states: PassageCache, inputs, log_M: torch.Tensor, **kwargs):
        """The query ([prompt, target]) over the cached passages with log_M on passage i's keys → model output."""
        query_ids, query_mask = self._query(inputs)
        bias = self._mask(answer_bias(passage_key_bias(log_M, states.token_mask), query_mask))
        with bias_grad_kernels(bias):
            return self.model(
                input_ids=query_ids,
                attention_mask=bias,
                position_ids=self._query_positions(query_mask, states.token_mask.shape[-1]),
                cache=states.read_only_cache(),
                use_cache=True,
                **kwargs,
            )

    @torch.no_grad()
    def passage_attention(self, states: PassageCache, inputs, valid: torch.Tensor) -> torch.Tensor:
        """Attention mass per passage of the queries that predict target tokens (see Reader.passage_attention)."""
        out = self._answer_pass(states, inputs, visible_log_mask(valid), output_attentions=True)
        P, T = inputs["prompt_ids"].shape[1], inputs["target_ids"].shape[1]
        rows = torch.zeros((len(valid), P + T), dtype=torch.bool, device=valid.device)
        rows[:, P - 1 : P + T - 1] = inputs["labels"] != -100  # the positions whose logits predict the target
        return attention_mass(_require_attentions(out.attentions, self), states.token_mask, rows)

    def answer_loss_naive(self, inputs, log_M: torch.Tensor) -> torch.Tensor:
        """One forward over [passage_1 .. passage_n, query] under autograd with the block mask of fused_bias."""
        ids, mask = inputs["passage_ids"], inputs["passage_mask"]
        B, n, L = ids.shape
        query_ids, query_mask = self._query(inputs)
        positions = torch.cat(
            [torch.arange(L, device=ids.device).repeat(n).expand(B, n * L), self._query_positions(query_mask, L)], dim=1
        )
        bias = self._mask(fused_bias(log_M, mask, query_mask))
        with bias_grad_kernels(bias):
            out = self.model(
                input_ids=torch.cat([ids.view(B, n * L), query_ids], dim=1),
                attention_mask=bias,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=query_ids.shape[1],
            )
        return token_mean_ce(self._target_logits(out.logits, inputs), inputs["labels"])

    @torch.no_grad()
    def generate_ids(self, states: PassageCache, inputs, log_M=None, max_new_tokens: int = 8) -> torch.Tensor:
        """Greedy decoding after the prompt, one token per step on a growing cache. → [B, <= max_new_tokens];
        max_new_tokens is capped where the model's position limit ends."""
        B, n, L = states.token_mask.shape
        if log_M is None:
            log_M = torch.zeros(B, n, device=states.token_mask.device)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        if self.position_limit is not None:  # the last generated token sits at position L + P + max_new_tokens - 1
            max_new_tokens = max(1, min(max_new_tokens, self.position_limit[1] - L - prompt_ids.shape[1]))
        cache = states.fresh_cache()
        key_bias = passage_key_bias(log_M, states.token_mask)  # [B, n*L], grows by one column per token
        positions = self._query_positions(prompt_mask, L)
        logits = self.model(
            input_ids=prompt_ids,
            attention_mask=self._mask(answer_bias(key_bias, prompt_mask)),
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        prompt_bias = torch.zeros_like(prompt_mask, dtype=torch.float32).masked_fill(~prompt_mask, NEG_BIAS)
        key_bias = torch.cat([key_bias, prompt_bias], dim=1)
        position = positions[:, -1:]

        def step(token: torch.Tensor) -> torch.Tensor:
            nonlocal key_bias, position
            key_bias = torch.cat([key_bias, key_bias.new_zeros(B, 1)], dim=1)
            position = position + 1
            out = self.model(
                input_ids=token[:, None],
                attention_mask=self._mask(key_bias[:, None, None, :]),
                position_ids=position,
                cache=cache,
                use_cache=True,
            )
            return out.logits[:, -1]

        return _greedy(logits, step, self.tokenizer.eos_token_id, max_new_tokens)

    def generate(self, states: PassageCache, inputs, log_M=None, max_new_tokens: int = 8) -> list[str]:
        ids = self.generate_ids(states, inputs, log_M, max_new_tokens)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
