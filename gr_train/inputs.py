"""Model inputs from text: the token ids each reader and reranker family reads, from a tokenizer and a few sizes of
the model's config, with no model and no modeling code.

Every reader and reranker holds one of these and delegates `tokenize` to it (reader.py, demo_reader.py, reranker.py),
so the ids come out the same whether a model is built or not: the Ray Data workers of ray_jobs/preprocess.py build
these alone (models.build_inputs) and tokenize exactly as training does, without loading any weights. Shapes: B
questions, n passages, L passage tokens, P prompt tokens, T target tokens; ids and labels are int64 tensors, masks
bool; -100 marks label positions that are not scored.
"""

from __future__ import annotations

import torch

from gr_train.data import PassageText, passage_string
from gr_train.lengths import Truncations, check_budget


def _pad(seqs: list[list[int]], length: int, pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to `length` → ids [N, length] long, mask [N, length] bool. Padding by hand keeps the
    side independent of the tokenizer's own `padding_side` (LLM tokenizers often default to left)."""
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        seq = seq[:length]
        span = slice(length - len(seq), length) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = True
    return ids, mask


def _passage_texts(questions: list[str], passages: list[list[PassageText]], fmt: str, empty: str) -> list[str]:
    """Flatten B questions x n passages into B*n strings (row-major). All questions must have the same n;
    n = 0 everywhere means "no passages": one input per question, `empty` formatted with the question."""
    if len(questions) != len(passages):
        raise ValueError(f"tokenize: {len(questions)} questions but {len(passages)} passage lists")
    counts = {len(ps) for ps in passages}
    if len(counts) != 1:
        raise ValueError(f"tokenize: every question needs the same number of passages (pad with ('', '')): {counts}")
    if counts == {0}:
        return [empty.format(q=q) for q in questions]
    return [fmt.format(q=q, t=t, x=x) for q, ps in zip(questions, passages) for t, x in ps]


def _target_ids(tokenizer, targets: list[str], max_tokens: int, prefix: str = "", eos: bool = True) -> list[list[int]]:
    """Target token ids without the tokenizer's special tokens, cut to max_tokens - 1, then eos (eos False: cut to
    max_tokens, no eos: reader.answer_eos)."""
    ids = tokenizer([prefix + t for t in targets], add_special_tokens=False)["input_ids"]
    if not eos:
        return [seq[:max_tokens] for seq in ids]
    return [seq[: max_tokens - 1] + [tokenizer.eos_token_id] for seq in ids]


# -- prompts: how a decoder-only reader is asked (reader.prompt, reader.instruction, reader.answer_eos) ------------

PLAIN_PROMPT = "question: {q}\nanswer:"
# The target follows the prompt: after "answer:" with a space (plain), at the start of the assistant turn (chat).
TARGET_PREFIX = {"plain": " ", "chat": ""}


def query_prompts(tokenizer, questions: list[str], style: str, instruction: str) -> list[list[int]]:
    """Token ids of the query part of each question (the passages are encoded separately, in parallel).

    style "plain": `question: q\nanswer:`; "chat": the tokenizer's own chat template with one user turn
    `{instruction}\nQuestion: q` and the generation prompt (the assistant turn's opening), so an instruct model is
    asked the way it was tuned. No special tokens are added besides the template's own. Raises ValueError when
    style is chat and the tokenizer has no chat template.
    """
    if style == "plain":
        return tokenizer([PLAIN_PROMPT.format(q=q) for q in questions], add_special_tokens=False)["input_ids"]
    if style != "chat":
        raise ValueError(f"reader.prompt: unknown '{style}' (plain | chat)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"reader.prompt=chat: the tokenizer ({type(tokenizer).__name__}, "
                         f"{getattr(tokenizer, 'name_or_path', '') or 'built locally'}) has no chat template; use "
                         "reader.prompt=plain")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{instruction}\nQuestion: {q}"}],
                                           add_generation_prompt=True, tokenize=False) for q in questions]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


# -- readers --------------------------------------------------------------------------------------------------------


class FiDInputs:
    """FiD-T5 inputs (reader.FiDT5Reader): one encoder input "question: q title: t context: x" per passage.

    Raises ValueError when passage_max_tokens leaves no room for passage text after the template. `truncations`
    counts the inputs whose whole context text was cut (lengths.Truncations)."""

    # One encoder input per passage; the context text comes last, so truncation cuts it first.
    PASSAGE_FORMAT = "question: {q} title: {t} context: {x}"

    def __init__(self, tokenizer, passage_max_tokens: int, answer_max_tokens: int, answer_eos: bool = True):
        self.tokenizer = tokenizer
        self.passage_max_tokens = passage_max_tokens
        self.answer_max_tokens = answer_max_tokens
        self.answer_eos = answer_eos  # targets end with eos (reader.answer_eos)
        self.truncations = Truncations()
        # T5's relative position biases have no length limit; the template alone must leave room for passage text.
        template = len(tokenizer(self.PASSAGE_FORMAT.format(q="", t="", x=""))["input_ids"])
        if template >= passage_max_tokens:
            raise ValueError(f"reader.passage_max_tokens ({passage_max_tokens}) leaves no passage text: the FiD input "
                             f"template '{self.PASSAGE_FORMAT}' takes {template} tokens without question, title and "
                             "context; raise reader.passage_max_tokens")

    def tokenize(self, questions, passages, targets=None):
        """→ passage_ids, passage_mask [B, n, L] (L = passage_max_tokens, right-padded); with targets, also
        labels [B, T] (T <= answer_max_tokens, eos last, -100 on padding)."""
        B = len(questions)
        texts = _passage_texts(questions, passages, self.PASSAGE_FORMAT, "question: {q}")
        L = self.passage_max_tokens
        ids = self.tokenizer(texts, truncation=True, max_length=L)["input_ids"]
        self._count_cut_contexts(questions, passages)
        passage_ids, passage_mask = _pad(ids, L, self.tokenizer.pad_token_id)
        inputs = {"passage_ids": passage_ids.view(B, -1, L), "passage_mask": passage_mask.view(B, -1, L)}
        if targets is not None:
            target = _target_ids(self.tokenizer, targets, self.answer_max_tokens, eos=self.answer_eos)
            labels, target_mask = _pad(target, max(map(len, target)), self.tokenizer.pad_token_id)
            inputs["labels"] = labels.masked_fill(~target_mask, -100)
        return inputs

    def _count_cut_contexts(self, questions, passages) -> None:
        """Count (and warn about, once) inputs whose whole context text is cut: the question and title fill
        passage_max_tokens, so the passage reads as its question alone."""
        heads = [self.PASSAGE_FORMAT.format(q=q, t=t, x="").rstrip() for q, ps in zip(questions, passages)
                 for t, x in ps if x.strip()]
        if not heads:
            return
        room = self.passage_max_tokens - self.tokenizer.num_special_tokens_to_add()
        cut = sum(len(h) >= room for h in self.tokenizer(heads, add_special_tokens=False)["input_ids"])
        self.truncations.add("passages_without_text", cut, f"reader: {cut} of {len(heads)} FiD inputs lost their whole "
                             f"context text to truncation: 'question: q title: t' fills reader.passage_max_tokens "
                             f"({self.passage_max_tokens}); raise it")


class CausalLMInputs:
    """Decoder-only inputs in the parallel format (reader.CausalLMReader): each passage "title: t context: x" on its
    own, then the query (query_prompts) and the target.

    position_limit: lengths.position_limit of the model's config (None = no limit). The query runs at positions
    passage_max_tokens .. + prompt + answer - 1, so questions are cut from the left to fit, the prompt's template
    kept whole (counted in `truncations`).
    Raises ValueError (naming the keys, lengths and limit) when the passage, prompt and answer budgets cannot fit.
    """

    def __init__(self, tokenizer, position_limit, passage_max_tokens: int, answer_max_tokens: int,
                 prompt_max_tokens: int = 0, prompt: str = "plain", answer_eos: bool = True, instruction: str = ""):
        self.tokenizer = tokenizer
        self.passage_max_tokens = passage_max_tokens
        self.answer_max_tokens = answer_max_tokens
        self.prompt, self.answer_eos, self.instruction = prompt, answer_eos, instruction  # see query_prompts
        # Pads are masked out everywhere, so any id will do where the tokenizer has no pad token (GPT-2, Llama).
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.truncations = Truncations()
        self.position_limit = position_limit
        self.prompt_max_tokens = None  # no cut while measuring the prompt template
        self.prompt_max_tokens = self._prompt_budget(prompt_max_tokens)

    def _prompt_budget(self, prompt_max_tokens: int) -> int | None:
        """Prompt tokens allowed: the query runs at positions passage_max_tokens .. + prompt + answer - 1, which must
        stay inside the model's position limit. ValueError (naming the keys, lengths and limit) when the passage,
        prompt and answer budgets cannot fit; None = no limit."""
        L, T = self.passage_max_tokens, self.answer_max_tokens
        template = self.tokenize([""], [[]])["prompt_ids"].shape[1]  # the prompt without a question
        limit = self.position_limit
        if prompt_max_tokens:
            parts = {"reader.passage_max_tokens": L, "reader.prompt_max_tokens": prompt_max_tokens,
                     "reader.answer_max_tokens": T}
            budget = prompt_max_tokens
        else:
            parts = {"reader.passage_max_tokens": L, "the prompt without its question": template,
                     "one question token": 1, "reader.answer_max_tokens": T}
            budget = None if limit is None else limit[1] - L - T
        check_budget("reader", parts, limit)
        if budget is not None and budget <= template:
            raise ValueError(f"reader.prompt_max_tokens ({budget}) leaves no question: the prompt takes {template} "
                             "tokens without it; raise reader.prompt_max_tokens")
        return budget

    def _fit_prompts(self, questions: list[str], prompts: list[list[int]]) -> list[list[int]]:
        """Prompts of at most prompt_max_tokens: a longer one is made again from its question cut from the left (the
        question's end, next to the answer, stays), so the template (a chat template's system prompt, the
        instruction, the assistant turn's opening) stays whole; counted. The budget holds the template with one
        question token (_prompt_budget)."""
        budget = self.prompt_max_tokens
        if budget is None:
            return prompts
        out = []
        for question, prompt in zip(questions, prompts):
            if len(prompt) > budget:
                prompt = self._cut_question(question, len(prompt) - budget)
            out.append(prompt)
        cut = sum(len(p) > budget for p in prompts)
        self.truncations.add("prompts", cut, f"reader: {cut} of {len(prompts)} questions were cut from the left so "
                             f"that their prompt fits {budget} tokens (reader.prompt_max_tokens, or what the model's "
                             "position limit leaves after reader.passage_max_tokens and reader.answer_max_tokens)")
        return out

    def _cut_question(self, question: str, excess: int) -> list[int]:
        """The prompt of `question` without its first tokens, at most prompt_max_tokens long: `excess` tokens first,
        more while the re-made prompt is still too long (decoding and re-tokenizing can merge tokens)."""
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        drop = excess
        while True:
            short = self.tokenizer.decode(ids[drop:]) if drop < len(ids) else ""
            prompt = query_prompts(self.tokenizer, [short], self.prompt, self.instruction)[0]
            if len(prompt) <= self.prompt_max_tokens or drop >= len(ids):
                return prompt
            drop += len(prompt) - self.prompt_max_tokens

    def tokenize(self, questions, passages, targets=None):
        """→ passage_ids, passage_mask [B, n, L] (L = passage_max_tokens, right-padded, tokenizer's special tokens
        such as BOS included); prompt_ids, prompt_mask [B, P] (left-padded, so every prompt ends at P-1); with
        targets also target_ids, target_mask, labels [B, T] (right-padded, eos last, labels -100 on padding)."""
        B = len(questions)
        # "No passages" is one empty passage: only special tokens (BOS), or nothing, which is fully masked.
        texts = _passage_texts(questions, passages, "title: {t} context: {x}", "")
        L = self.passage_max_tokens
        ids = self.tokenizer(texts, truncation=True, max_length=L)["input_ids"]
        passage_ids, passage_mask = _pad(ids, L, self.pad_id)
        prompts = self._fit_prompts(questions, query_prompts(self.tokenizer, questions, self.prompt, self.instruction))
        prompt_ids, prompt_mask = _pad(prompts, max(map(len, prompts)), self.pad_id, left=True)
        inputs = {
            "passage_ids": passage_ids.view(B, -1, L),
            "passage_mask": passage_mask.view(B, -1, L),
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
        }
        if targets is not None:
            target = _target_ids(self.tokenizer, targets, self.answer_max_tokens, TARGET_PREFIX[self.prompt],
                                 self.answer_eos)
            target_ids, target_mask = _pad(target, max(map(len, target)), self.pad_id)
            labels = target_ids.masked_fill(~target_mask, -100)
            inputs.update(target_ids=target_ids, target_mask=target_mask, labels=labels)
        return inputs


class DemoFiDInputs:
    """The demo reader's inputs (demo_reader.DemoFiDReader), word-level tokenizer (synthetic.build_tokenizer).

    max_passage_tokens, max_decoder_tokens: the model's sizes (demo_reader.DemoFiDConfig). Passages are cut to
    min(passage_max_tokens, max_passage_tokens) (a larger budget is counted once in `truncations`). Raises
    ValueError when answer_max_tokens + [BOS] + [ANS] exceeds max_decoder_tokens, and from tokenize when a
    question's decoder input does.
    """

    def __init__(self, tokenizer, passage_max_tokens: int, answer_max_tokens: int, max_passage_tokens: int,
                 max_decoder_tokens: int):
        self.tokenizer = tokenizer
        self.L = min(passage_max_tokens, max_passage_tokens)
        self.answer_max_tokens = answer_max_tokens
        self.max_decoder_tokens = max_decoder_tokens
        self.truncations = Truncations()
        if passage_max_tokens > max_passage_tokens:
            self.truncations.add("passage_budget", 1, f"reader.passage_max_tokens ({passage_max_tokens}) > the demo "
                                 f"reader's max_passage_tokens ({max_passage_tokens}): inputs are cut to "
                                 f"{max_passage_tokens} tokens")
        if answer_max_tokens + 2 > max_decoder_tokens:  # [BOS] [ANS] + target; the question comes on top
            raise ValueError(f"reader.answer_max_tokens ({answer_max_tokens}) + [BOS] + [ANS] (2) > the demo reader's "
                             f"max_decoder_tokens ({max_decoder_tokens}); lower reader.answer_max_tokens")

    def _ids_of(self, texts) -> dict[str, list[int]]:
        """{text: token ids without special tokens} for every distinct text, in one batched tokenizer call
        (the same ids as one call per text; "" → [])."""
        distinct = sorted({t for t in texts if t})
        encoded = self.tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
        return {"": [], **dict(zip(distinct, encoded))}

    def tokenize(self, questions, passages: list[list[PassageText]], targets=None, intermediates=None):
        """passage_ids/passage_mask [B, n, L]: question [SEP] title text [EOS]; dec_ids/dec_mask [B, T]:
        [BOS] question [ANS] target...; labels [B, T] (-100 off target); aux_labels [B, T]: the intermediate
        entity at the last question position (deep supervision), -100 elsewhere; aux2_labels [B, T]: the same for
        the second intermediate entity of a three-hop question (its intermediate names two, in hop order), -100
        elsewhere."""
        tk = self.tokenizer
        sep, eos, bos, ans, pad = (tk.convert_tokens_to_ids(t) for t in ("[SEP]", "[EOS]", "[BOS]", "[ANS]", "[PAD]"))
        B = len(questions)
        n = max(1, max(len(p) for p in passages))
        L = self.L
        texts = [*questions, *(t for ps in passages for pair in ps for t in pair), *(targets or []),
                 *(t for t in (intermediates or []) if t)]
        ids_of = self._ids_of(texts)
        grid = [[[pad] * L for _ in range(n)] for _ in range(B)]
        cut = 0
        for b, (q, ps) in enumerate(zip(questions, passages)):
            qi = ids_of[q]
            for i, (title, text) in enumerate(ps or [("", "")]):
                ids = (qi + [sep] + ids_of[title] + ids_of[text])[: L - 1] + [eos]
                grid[b][i][: len(ids)] = ids
                cut += bool(title or text) and len(qi) + 1 >= L - 1  # the question and [SEP] fill the budget
        pid = torch.tensor(grid, dtype=torch.long)
        self.truncations.add("passages_without_text", cut, f"reader: {cut} demo reader inputs lost their whole "
                             f"passage to truncation: the question fills the {L} tokens (reader.passage_max_tokens)")
        rows, lab_rows, aux_rows, aux2_rows = [], [], [], []
        for b, q in enumerate(questions):
            prompt = [bos] + ids_of[q] + [ans]
            target = (ids_of[targets[b]][: self.answer_max_tokens - 1] + [eos]) if targets else []
            seq = prompt + target[:-1]
            labels = [-100] * (len(prompt) - 1) + target
            aux, aux2 = [-100] * len(seq), [-100] * len(seq)
            if intermediates is not None and intermediates[b]:
                hops = ids_of[intermediates[b]]
                aux[len(prompt) - 2] = hops[0]
                if len(hops) > 1:
                    aux2[len(prompt) - 2] = hops[1]
            rows.append(seq)
            lab_rows.append(labels + [-100] * (len(seq) - len(labels)))
            aux_rows.append(aux)
            aux2_rows.append(aux2)
        T = max(len(r) for r in rows)
        if T > self.max_decoder_tokens:
            raise ValueError(f"demo reader: decoder input [BOS] question [ANS] target of {T} tokens > the model's "
                             f"max_decoder_tokens ({self.max_decoder_tokens}); lower "
                             "reader.answer_max_tokens or shorten the question")

        def pad_to(rs, value):
            return torch.tensor([r + [value] * (T - len(r)) for r in rs], dtype=torch.long)

        dec_ids = pad_to(rows, pad)
        return {
            "passage_ids": pid,
            "passage_mask": pid != pad,
            "dec_ids": dec_ids,
            "dec_mask": pad_to([[1] * len(r) for r in rows], 0).bool(),
            "prompt_len": torch.tensor([len(ids_of[q]) + 2 for q in questions]),
            "labels": pad_to(lab_rows, -100),
            "aux_labels": pad_to(aux_rows, -100),
            "aux2_labels": pad_to(aux2_rows, -100),
        }


# -- rerankers ------------------------------------------------------------------------------------------------------


def _check_candidates(questions: list[str], passages: list[list[PassageText]]) -> tuple[int, int]:
    """(B, n) of a batch; every question must have the same n >= 1 (callers pad with ("", ""))."""
    B = len(questions)
    if B == 0 or len(passages) != B:
        raise ValueError(f"reranker: got {B} questions and {len(passages)} passage lists (need the same, >= 1)")
    counts = {len(row) for row in passages}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"reranker: every question needs the same number n >= 1 of candidates, got {sorted(counts)}")
    return B, counts.pop()


def conditioned_questions(questions: list[str], passages: list[list[PassageText]], chosen: torch.Tensor) -> list[str]:
    """The question followed by the passages chosen so far, the most recent first, so that truncation cuts the
    oldest (reranker.conditional; multi-hop dense retrieval's query, Xiong et al., ICLR 2021).
    chosen: [B, t] long candidate indices into each row of `passages`, -1 = nothing chosen at that step."""
    out = []
    for q, row, picks in zip(questions, passages, chosen.tolist()):
        parts = [passage_string(*row[i]) for i in reversed(picks) if i >= 0]
        out.append(" ".join([q, *parts]))
    return out


class RerankerInputs:
    """Inputs of one reranker kind for B questions with n (title, text) candidates each, every text cut to
    max_tokens (reranker.max_tokens). Subclasses set `kind` (reranker.kind) and `tokenize`."""

    kind: str

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def tokenize(self, questions: list[str], passages: list[list[PassageText]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Tokenizer call shared by all kinds: pad to the longest, truncate to max_tokens, [N, L] tensors."""
        return dict(self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_tokens,
                                   return_tensors="pt"))


class CrossEncoderInputs(RerankerInputs):
    """The pair (question, title + " " + text) per candidate."""

    kind = "cross_encoder"

    def tokenize(self, questions: list[str], passages: list[list[PassageText]]) -> dict[str, torch.Tensor]:
        """Returns input_ids / attention_mask (/ token_type_ids when the tokenizer makes them): [B, n, L]."""
        B, n = _check_candidates(questions, passages)
        firsts = [q for q in questions for _ in range(n)]
        seconds = [passage_string(title, text) for row in passages for title, text in row]
        return {k: v.view(B, n, -1) for k, v in self._encode(firsts, seconds).items()}


class RankT5Inputs(RerankerInputs):
    """RankT5's "Query: {q} Document: {title} {text}" per candidate."""

    kind = "rankt5"

    def tokenize(self, questions: list[str], passages: list[list[PassageText]]) -> dict[str, torch.Tensor]:
        """Returns input_ids / attention_mask: [B, n, L]."""
        B, n = _check_candidates(questions, passages)
        texts = [
            f"Query: {q} Document: {passage_string(title, text)}"
            for q, row in zip(questions, passages)
            for title, text in row
        ]
        return {k: v.view(B, n, -1) for k, v in self._encode(texts).items()}


class BiEncoderInputs(RerankerInputs):
    """The question and each candidate's title + " " + text, encoded apart."""

    kind = "bi_encoder"

    def tokenize(self, questions: list[str], passages: list[list[PassageText]]) -> dict[str, torch.Tensor]:
        """Returns q_* tensors [B, Lq] for the questions and p_* tensors [B, n, L] for the passages."""
        B, n = _check_candidates(questions, passages)
        q = self._encode(list(questions))
        p = self._encode([passage_string(title, text) for row in passages for title, text in row])
        return {**{f"q_{k}": v for k, v in q.items()}, **{f"p_{k}": v.view(B, n, -1) for k, v in p.items()}}


# Qwen3-Reranker's published prompt (Zhang et al. 2025, the model card's usage code): system turn, user turn, then
# the assistant turn (thinking off); the model answers "yes" or "no".
RERANK_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
RERANK_USER = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
# For a tokenizer without a chat template: the same turns as plain text, after the tokenizer's BOS (if any).
RERANK_PLAIN = "{system}\n\n{user}\n\nAnswer:"
# Marks a chat template written by export.py: its query/document rendering is the prompt itself.
RERANK_TEMPLATE_MARK = "gr-train causal_lm reranker prompt"
_QUERY, _DOCUMENT = "\x00gr-train-query\x00", "\x00gr-train-document\x00"


def rerank_prompt_parts(tokenizer, instruction: str) -> tuple[str, str, str]:
    """(prefix, middle, suffix): the causal_lm reranker's prompt of (query, document) is
    prefix + query + middle + document + suffix. From the tokenizer's chat template where it has one (system
    RERANK_SYSTEM, user RERANK_USER with `instruction`, the generation prompt, enable_thinking=False: Qwen3-Reranker's
    form), a template written by export.py as it renders the roles query and document, else RERANK_PLAIN after the
    BOS token. Raises ValueError when the template does not render the query and document once each."""
    template = getattr(tokenizer, "chat_template", None)
    if template and RERANK_TEMPLATE_MARK in template:
        text = tokenizer.apply_chat_template([{"role": "query", "content": _QUERY},
                                              {"role": "document", "content": _DOCUMENT}], tokenize=False)
    elif template:
        user = RERANK_USER.format(instruction=instruction, query=_QUERY, document=_DOCUMENT)
        text = tokenizer.apply_chat_template([{"role": "system", "content": RERANK_SYSTEM},
                                              {"role": "user", "content": user}],
                                             add_generation_prompt=True, tokenize=False, enable_thinking=False)
    else:
        user = RERANK_USER.format(instruction=instruction, query=_QUERY, document=_DOCUMENT)
        text = (tokenizer.bos_token or "") + RERANK_PLAIN.format(system=RERANK_SYSTEM, user=user)
    if text.count(_QUERY) != 1 or text.count(_DOCUMENT) != 1 or text.index(_QUERY) > text.index(_DOCUMENT):
        raise ValueError("reranker.kind=causal_lm: the tokenizer's chat template does not render the user turn's "
                         "query and document once each, in order; remove its chat template to use the plain prompt")
    prefix, rest = text.split(_QUERY)
    middle, suffix = rest.split(_DOCUMENT)
    return prefix, middle, suffix


class CausalLMRerankerInputs(RerankerInputs):
    """A decoder-only LLM's yes/no prompt per candidate (rerank_prompt_parts; the document is title + " " + text).

    The prompt is tokenized as one string without added special tokens (a chat template holds its own), so the ids
    are apply_chat_template's. A prompt over max_tokens is made again with its document cut from the end (then the
    query, when the document is gone), so that the template, and the last token the score is read at, stay whole.
    Raises ValueError naming reranker.max_tokens when the template alone does not fit it.
    """

    kind = "causal_lm"

    def __init__(self, tokenizer, max_tokens: int, instruction: str = ""):
        super().__init__(tokenizer, max_tokens)
        self.parts = rerank_prompt_parts(tokenizer, instruction)
        # Pads are masked out, so any id will do where the tokenizer has no pad token (Llama).
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        template = len(self._ids([("", "")])[0])
        if template >= max_tokens:
            raise ValueError(f"reranker.max_tokens ({max_tokens}) leaves no query or document: the causal_lm prompt "
                             f"takes {template} tokens without them; raise reranker.max_tokens")

    def prompt(self, query: str, document: str) -> str:
        """The prompt text of one (query, document) pair."""
        prefix, middle, suffix = self.parts
        return prefix + query + middle + document + suffix

    def _ids(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        return self.tokenizer([self.prompt(q, d) for q, d in pairs], add_special_tokens=False)["input_ids"]

    def _fit(self, query: str, document: str) -> list[int]:
        """Ids of a prompt over max_tokens, made again with the document (then the query) cut from its end."""
        for cut_query in (False, True):
            text = query if cut_query else document
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            keep = len(ids)
            while True:
                short = self.tokenizer.decode(ids[:keep]) if keep > 0 else ""
                pair = (short, "") if cut_query else (query, short)
                prompt = self._ids([pair])[0]
                if len(prompt) <= self.max_tokens:
                    return prompt
                if keep <= 0:
                    break
                keep = max(0, min(keep - 1, keep - (len(prompt) - self.max_tokens)))
            document = ""
        return prompt[-self.max_tokens:]  # unreachable: the template alone fits (checked in __init__)

    def tokenize(self, questions: list[str], passages: list[list[PassageText]]) -> dict[str, torch.Tensor]:
        """Returns input_ids [B, n, L] long, attention_mask [B, n, L] long, left-padded (every prompt ends at L-1,
        where the score is read), L <= max_tokens."""
        B, n = _check_candidates(questions, passages)
        pairs = [(q, passage_string(title, text)) for q, row in zip(questions, passages) for title, text in row]
        ids = [seq if len(seq) <= self.max_tokens else self._fit(*pair) for seq, pair in zip(self._ids(pairs), pairs)]
        input_ids, mask = _pad(ids, max(map(len, ids)), self.pad_id, left=True)
        return {"input_ids": input_ids.view(B, n, -1), "attention_mask": mask.long().view(B, n, -1)}


RERANKER_INPUTS: dict[str, type[RerankerInputs]] = {
    cls.kind: cls for cls in (CrossEncoderInputs, RankT5Inputs, BiEncoderInputs, CausalLMRerankerInputs)
}
