"""The demo reader: a 0.7M-parameter FiD-style encoder-decoder in plain torch that learns two-hop reading on CPU.

Why not HF T5 here: small HF T5 variants trained from scratch stayed at chance on the two-hop data; what worked
(docs/design.md#demo-reader-recipe) is a 2-layer passage encoder, one decoder layer run `n_iterations` times with tied
weights, with deep supervision: after the first iteration, the last question position must predict the
intermediate entity. The DMA bias enters the decoder cross-attention exactly as in the HF FiD reader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# The attention logits are fp32 whatever the weights' dtype (Attention.forward), so the fp32 fill value applies.
from gr_train.attention import NEG_BIAS, passage_key_bias
from gr_train.inputs import DemoFiDInputs
from gr_train.reader import Reader, attention_mass, reader_dtype, token_mean_ce, visible_log_mask


@dataclass
class DemoFiDConfig:
    vocab_size: int = 128
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    encoder_layers: int = 2
    n_iterations: int = 3  # the one decoder layer is applied this many times (tied weights)
    max_passage_tokens: int = 16
    max_decoder_tokens: int = 16
    # Question-token match feature (DrQA's "exact match" input feature; not the EM answer metric): each passage
    # token is marked when it equals a token of the question that precedes the first `sep_token_id` of its input.
    # 0 disables; set from the tokenizer by DemoFiDReader.build.
    sep_token_id: int = 0
    match_feature: bool = False
    # Output layer: "vocab" (tied softmax over the vocabulary) or "pointer" (a copy distribution over the passage
    # tokens, itself an attention with the DMA bias; answers are extractive). Pointer outputs turn the hop into
    # attention-logit learning with a direct gradient, which escapes the plateau of the vocab head much sooner.
    output: str = "vocab"


class Attention(nn.Module):
    """Multi-head attention with an additive float bias (fp32) on the logits; logits and softmax in fp32 whatever
    the weights' dtype, so attention.NEG_BIAS (the fp32 fill value) stays finite under fp16 / bf16 weights."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.h, self.dh = h, d // h
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.recorded: list[torch.Tensor] | None = None  # set to [] to collect attention probabilities (ADist)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d] queries, mem: [B, S, d] keys/values, bias: broadcastable to [B, h, T, S] → [B, T, d]."""
        B, T, _ = x.shape
        S = mem.shape[1]
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)
        k = self.k(mem).view(B, S, self.h, self.dh).transpose(1, 2)
        v = self.v(mem).view(B, S, self.h, self.dh).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.dh) + bias
        attn = torch.softmax(logits, dim=-1).to(v.dtype)
        if self.recorded is not None:
            self.recorded.append(attn.detach())
        return self.o((attn @ v).transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    """Pre-norm transformer block; cross-attention only in the decoder."""

    def __init__(self, c: DemoFiDConfig, cross: bool):
        super().__init__()
        d = c.d_model
        self.ln1, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, c.n_heads)
        self.cross = cross
        if cross:
            self.ln2 = nn.LayerNorm(d)
            self.cross_attn = Attention(d, c.n_heads)
        self.ff = nn.Sequential(nn.Linear(d, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, d))

    def forward(self, x, self_bias, mem=None, cross_bias=None):
        h = self.ln1(x)
        x = x + self.self_attn(h, h, self_bias)
        if self.cross:
            x = x + self.cross_attn(self.ln2(x), mem, cross_bias)
        return x + self.ff(self.ln3(x))


def question_token_match(ids: torch.Tensor, sep: int) -> torch.Tensor:
    """[N, L] token ids "question [SEP] passage" → [N, L] bool: passage tokens equal to some question token."""
    is_sep = ids == sep
    after = is_sep.long().cumsum(-1) > 0  # at or after the first SEP
    question = ~after
    same = ids[:, :, None] == ids[:, None, :]  # [N, L(token), L(question position)]
    return (same & question[:, None, :]).any(-1) & after & ~is_sep


class DemoFiDModel(nn.Module):
    def __init__(self, c: DemoFiDConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.enc_pos = nn.Embedding(c.max_passage_tokens, c.d_model)
        self.dec_pos = nn.Embedding(c.max_decoder_tokens, c.d_model)
        if c.match_feature:
            self.match = nn.Embedding(2, c.d_model)
        if c.output == "pointer":
            self.ptr_q = nn.Linear(c.d_model, c.d_model)
            self.ptr_k = nn.Linear(c.d_model, c.d_model)
        elif c.output != "vocab":
            raise ValueError(f"demo reader: unknown output '{c.output}' (vocab | pointer)")
        self.encoder = nn.ModuleList(Block(c, cross=False) for _ in range(c.encoder_layers))
        self.enc_ln = nn.LayerNorm(c.d_model)
        self.decoder = Block(c, cross=True)
        self.dec_ln = nn.LayerNorm(c.d_model)
        # One scale for token and position embeddings (GPT-2 style): with torch's N(0, 1) default for positions
        # and 0.02 for tokens, positions drown the tokens and the copy/hop takes far longer to emerge.
        for emb in (self.embed, self.enc_pos, self.dec_pos):
            nn.init.normal_(emb.weight, std=0.02)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: [N, L] → passage token states [N, L, d]; each passage attends only to itself."""
        L = ids.shape[1]
        x = self.embed(ids) + self.enc_pos(torch.arange(L, device=ids.device))
        if self.config.match_feature:
            x = x + self.match(question_token_match(ids, self.config.sep_token_id).long())
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device).masked_fill(~mask, NEG_BIAS)
        bias = bias[:, None, None, :]  # [N, 1, 1, L]
        for block in self.encoder:
            x = block(x, bias)
        return self.enc_ln(x)

    def decode(self, dec_ids, dec_mask, mem, cross_bias, mem_ids=None, hops: int = 1):
        """dec_ids, dec_mask: [B, T]; mem: [B, S, d]; cross_bias: [B, S] fp32; mem_ids: [B, S] passage token ids
        (pointer output) → (logits [B, T, V], logits after the first iteration [B, T, V]); for the pointer output
        the "logits" are log-probabilities. hops=2: the second element is a pair, the logits after the first and
        after the second iteration (deep supervision of a three-hop question's two intermediate entities)."""
        B, T = dec_ids.shape
        x = self.embed(dec_ids) + self.dec_pos(torch.arange(T, device=dec_ids.device))
        causal = torch.ones(T, T, dtype=torch.bool, device=dec_ids.device).tril()
        keep = causal[None] & dec_mask[:, None, :]
        self_bias = torch.zeros(keep.shape, dtype=torch.float32, device=x.device).masked_fill(~keep, NEG_BIAS)
        self_bias = self_bias[:, None]  # [B, 1, T, T]
        cross = cross_bias[:, None, None, :]  # [B, 1, 1, S]
        early = []
        for i in range(self.config.n_iterations):
            x = self.decoder(x, self_bias, mem, cross)
            if i < hops:
                early.append(self.output(x, mem, cross_bias, mem_ids))
        return self.output(x, mem, cross_bias, mem_ids), (early[0] if hops == 1 else tuple(early))

    def output(self, x, mem, cross_bias, mem_ids):
        """Decoder states x [B, T, d] → [B, T, V]."""
        h = self.dec_ln(x)
        if self.config.output == "vocab":
            return h @ self.embed.weight.T
        # p(v) = sum over passage tokens j holding v of softmax_j(q . k_j / sqrt(d) + bias_j): DMA applies here too.
        logits = (self.ptr_q(h) @ self.ptr_k(mem).transpose(1, 2)).float() / math.sqrt(h.shape[-1])
        attn = torch.softmax(logits + cross_bias[:, None, :], dim=-1)  # [B, T, S]
        probs = torch.zeros(*attn.shape[:2], self.config.vocab_size, dtype=attn.dtype, device=attn.device)
        probs = probs.scatter_add(2, mem_ids[:, None, :].expand_as(attn), attn)
        return torch.log(probs + 1e-9)


def init_from_reader(model: DemoFiDModel, tokenizer, source: "DemoFiDReader") -> None:
    """Copy `source`'s weights into `model` (reader.init_from): every tensor of equal shape as it is; the token
    embedding [vocab, d_model] row by row for the tokens both vocabularies hold, so a vocabulary that grew keeps
    what the source learned and its new tokens keep their random rows.

    Raises ValueError when a tensor other than the token embedding differs in shape (another architecture)."""
    own, theirs = model.state_dict(), source.model.state_dict()
    ours_vocab, their_vocab = tokenizer.get_vocab(), source.tokenizer.get_vocab()
    with torch.no_grad():
        for name, value in own.items():
            if name == "embed.weight":
                rows = [(i, their_vocab[tok]) for tok, i in ours_vocab.items() if tok in their_vocab]
                value[[i for i, _ in rows]] = theirs[name][[j for _, j in rows]].to(value.dtype)
            elif name not in theirs or theirs[name].shape != value.shape:
                raise ValueError(f"reader.init_from: {name} {tuple(value.shape)} differs from the source reader's "
                                 f"{tuple(theirs[name].shape) if name in theirs else 'none'}: same model_config needed")
            else:
                value.copy_(theirs[name])


class DemoFiDReader(Reader):
    """Reader interface over DemoFiDModel with a word-level tokenizer (synthetic.build_tokenizer)."""

    # Read directly, outside the forward of the module that owns them (the tied output projection in decode):
    # an engine that shards parameters and gathers them per module forward (ZeRO-3) must keep these whole.
    params_used_outside_forward = ("model.embed.weight",)
    takes_intermediates = True  # tokenize(..., intermediates=...): deep supervision labels (batching.collate)

    def __init__(self, model: DemoFiDModel, tokenizer, passage_max_tokens: int, answer_max_tokens: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.answer_max_tokens = answer_max_tokens  # generate's default length
        c = model.config
        self.inputs = DemoFiDInputs(tokenizer, passage_max_tokens, answer_max_tokens, c.max_passage_tokens,
                                    c.max_decoder_tokens)

    @classmethod
    def build(cls, cfg, tokenizer=None) -> "DemoFiDReader":
        """From cfg.name_or_path (a folder written by `save`) or from cfg.model_config (random init); in
        reader_dtype(cfg)."""
        if cfg.name_or_path:
            return cls.load(cfg.name_or_path, cfg)
        model = DemoFiDModel(cls.scratch_config(cfg, tokenizer))
        if cfg.init_from:
            init_from_reader(model, tokenizer, cls.load(cfg.init_from, cfg))
        return cls(model.to(reader_dtype(cfg)), tokenizer, cfg.passage_max_tokens, cfg.answer_max_tokens)

    @staticmethod
    def scratch_config(cfg, tokenizer) -> DemoFiDConfig:
        """The config of a demo reader built from scratch: DemoFiDConfig's defaults ← cfg.model_config, vocabulary
        and [SEP] from the tokenizer. ValueError without a tokenizer."""
        if tokenizer is None:
            raise ValueError("reader.kind=demo_fid without name_or_path needs a tokenizer (synthetic.build_tokenizer)")
        sep = tokenizer.convert_tokens_to_ids("[SEP]")
        return DemoFiDConfig(**{"vocab_size": len(tokenizer), "sep_token_id": sep, **cfg.model_config})

    @staticmethod
    def saved_config(path: Path) -> DemoFiDConfig:
        """The config of a folder written by `save`. FileNotFoundError when the folder holds no demo reader."""
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path}: no demo reader here (model.safetensors missing)")
        return DemoFiDConfig(**json.loads((path / "config.json").read_text()))

    @classmethod
    def build_inputs(cls, cfg, tokenizer=None) -> DemoFiDInputs:
        if cfg.name_or_path:
            from transformers import PreTrainedTokenizerFast

            c = cls.saved_config(Path(cfg.name_or_path))
            tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg.name_or_path)
        else:
            c = cls.scratch_config(cfg, tokenizer)
        return DemoFiDInputs(tokenizer, cfg.passage_max_tokens, cfg.answer_max_tokens, c.max_passage_tokens,
                             c.max_decoder_tokens)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()}, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps(self.model.config.__dict__, indent=2))
        self.tokenizer.save_pretrained(path)

    @classmethod
    def load(cls, path: str | Path, cfg) -> "DemoFiDReader":
        from safetensors.torch import load_file
        from transformers import PreTrainedTokenizerFast

        path = Path(path)
        model = DemoFiDModel(cls.saved_config(path))
        model.load_state_dict(load_file(path / "model.safetensors"))
        model.to(reader_dtype(cfg))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        return cls(model, tokenizer, cfg.passage_max_tokens, cfg.answer_max_tokens)

    def answer_pass_layers(self) -> list[nn.Module]:
        """The one tied decoder block (applied n_iterations times)."""
        return [self.model.decoder]

    # -- forward ------------------------------------------------------------------------------------------

    def _encode(self, inputs):
        B, n, L = inputs["passage_ids"].shape
        H = self.model.encode(inputs["passage_ids"].view(B * n, L), inputs["passage_mask"].view(B * n, L))
        return H.view(B, n * L, -1)

    @torch.no_grad()
    def encode_passages(self, inputs):
        """→ H [B, n*L, d], no autograd graph."""
        return self._encode(inputs)

    def _cross_bias(self, inputs, log_M):
        B, n, _ = inputs["passage_ids"].shape
        if log_M is None:
            log_M = torch.zeros(B, n)
        return passage_key_bias(log_M.to(inputs["passage_ids"].device), inputs["passage_mask"])

    def decoder_logits(self, H, inputs, log_M, hops: int = 1):
        """(logits [B, T, V], first-iteration logits [B, T, V]; with hops=2 the first- and second-iteration ones)."""
        return self.model.decode(inputs["dec_ids"], inputs["dec_mask"], H, self._cross_bias(inputs, log_M),
                                 inputs["passage_ids"].flatten(1), hops)

    def answer_logits(self, states, inputs, log_M):
        """The last iteration's logits of decoder_logits, [B, T, V] (Reader.answer_loss reads them)."""
        logits, _ = self.decoder_logits(states, inputs, log_M)
        return logits

    def answer_loss_naive(self, inputs, log_M):
        logits, _ = self.decoder_logits(self._encode(inputs), inputs, log_M)
        return token_mean_ce(logits, inputs["labels"])

    @torch.no_grad()
    def passage_attention(self, states, inputs, valid):
        """Cross-attention mass per passage over the decoder iterations (see Reader.passage_attention), [B, n]."""
        attn = self.model.decoder.cross_attn
        attn.recorded = []
        try:
            self.decoder_logits(states, inputs, visible_log_mask(valid))
            recorded = attn.recorded
        finally:
            attn.recorded = None
        return attention_mass(recorded, inputs["passage_mask"], inputs["labels"] != -100)

    def training_loss(self, inputs, log_M=None, aux_weight: float = 1.0):
        """Reader pre-training: (answer loss [B], deep-supervision loss [B]) with the encoder under autograd. The
        deep supervision: the first intermediate entity after the first decoder iteration, and for a three-hop
        question (aux2_labels) the second after the second iteration, each weighted aux_weight; a reader with fewer
        than 3 decoder iterations has no iteration between the second entity and the answer, and skips the second."""
        second = inputs.get("aux2_labels")
        if second is None or not (second != -100).any() or self.model.config.n_iterations < 3:
            logits, first = self.decoder_logits(self._encode(inputs), inputs, log_M)
            return token_mean_ce(logits, inputs["labels"]), aux_weight * token_mean_ce(first, inputs["aux_labels"])
        logits, (first, then) = self.decoder_logits(self._encode(inputs), inputs, log_M, hops=2)
        aux = token_mean_ce(first, inputs["aux_labels"]) + token_mean_ce(then, second)
        return token_mean_ce(logits, inputs["labels"]), aux_weight * aux

    @torch.no_grad()
    def generate(self, states, inputs, log_M=None, max_new_tokens: int | None = None):
        """Greedy decoding after the prompt ([BOS] question [ANS]); stops at [EOS]."""
        max_new = max_new_tokens or self.answer_max_tokens
        eos = self.tokenizer.convert_tokens_to_ids("[EOS]")
        pad = self.tokenizer.convert_tokens_to_ids("[PAD]")
        bias = self._cross_bias(inputs, log_M)
        B, device = states.shape[0], states.device
        # The growing answers and their lengths are kept on the CPU; each step decodes on the states' device.
        lens = inputs["prompt_len"].cpu().clone()
        T = int(lens.max()) + max_new
        ids = torch.full((B, T), pad, dtype=torch.long)
        for b in range(B):
            ids[b, : lens[b]] = inputs["dec_ids"][b, : lens[b]].cpu()
        done = torch.zeros(B, dtype=torch.bool)
        out = [[] for _ in range(B)]
        for _ in range(max_new):
            cur = int(lens.max())
            on_device = lens.to(device)
            mask = torch.arange(cur, device=device)[None, :] < on_device[:, None]
            logits, _ = self.model.decode(ids[:, :cur].to(device), mask, states, bias,
                                          inputs["passage_ids"].flatten(1))
            nxt = logits[torch.arange(B, device=device), on_device - 1].argmax(-1).tolist()
            for b in range(B):
                if done[b]:
                    continue
                if nxt[b] == eos:
                    done[b] = True
                else:
                    out[b].append(int(nxt[b]))
                    ids[b, lens[b]] = nxt[b]
                    lens[b] += 1
            if done.all():
                break
        return [self.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
