"""The embedded multi-hop data: a deterministic generator of two-hop and one-hop questions, and its tokenizer.

A question about work W ("birthplace-of-creator W") needs two passages: the bridge "W created-by P" (gold,
*indirect*: it does not contain the answer) and "P born-in T" (gold, *direct*: it contains the answer T).
Every question comes with n_chains - 1 distractor chains built the same way, so every candidate looks like an
answer-bearing or bridge passage (hard distractors). Facts are re-randomised for every question: a reader must
read them, it cannot memorise them. Entity vocabularies are small and reused (30 of each, one token each): the
recipe that made a 0.7M-parameter reader learn the hop on CPU (docs/design.md#demo-reader-recipe).
Structure knobs (config.SyntheticSection) add copies of the gold passages, single answer-, bridge-typed and topical
distractors ("W set-in T", "P lives-in T": two more relation words), one-hop shortcuts and three-hop questions
("twin-of-birthplace-of-creator W": W created-by P, P born-in T, T twinned-with T2; two more words). In a three-hop
question only the first passage names the question's work: the second and third are told apart from their
distractor chains only by the entity the passage before them names, so only a reranker that conditions on what it
has chosen can pick them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from gr_train.data import Passage, Record

TWO_HOP = "birthplace-of-creator"  # W -> P (created-by) -> T (born-in)
BORN = "birthplace-of"  # P -> T, one hop
CREATOR = "creator-of"  # W -> P, one hop
CREATED_BY = "created-by"
BORN_IN = "born-in"
SET_IN = "set-in"  # topical distractors only: work -> town
LIVES_IN = "lives-in"  # topical distractors only: person -> town
THREE_HOP = "twin-of-birthplace-of-creator"  # three-hop questions only: W -> P -> T -> T2 (twinned-with)
TWINNED_WITH = "twinned-with"  # three-hop questions only: town -> another town

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]", "[BOS]", "[ANS]", "[MASK]"]


def entity_names(cfg) -> tuple[list[str], list[str], list[str]]:
    """Works W00.., people P00.., towns T00.. (cfg: config.SyntheticSection)."""
    return (
        [f"W{i:02d}" for i in range(cfg.n_works)],
        [f"P{i:02d}" for i in range(cfg.n_people)],
        [f"T{i:02d}" for i in range(cfg.n_towns)],
    )


def make_question(rng: random.Random, cfg, n_chains: int, qid: str, one_hop_fraction: float) -> Record:
    """One question with n_chains chains (2 * n_chains candidate passages; 3 * n_chains with three-hop questions on),
    gold_copies - 1 extra copies of each gold passage, answer_distractors + bridge_distractors + topical_distractors
    single passages outside every chain, shuffled. A two-hop question is a one-hop shortcut with probability
    shortcut_fraction: every chain's answer passage then reads "W created-by P born-in T". With three_hop_fraction >
    0 every chain gains a third passage "T twinned-with T2" (T2 a town of no other chain), and a multi-hop question
    is three-hop with that probability: it asks for T2, so "P born-in T" becomes a gold bridge as "W created-by P"
    is; three-hop questions are never shortcuts. At the defaults (1, 0, 0, 0, 0.0, 0.0) it draws from `rng` exactly as
    the demo data always did."""
    works, people, towns = entity_names(cfg)
    singles = cfg.answer_distractors + cfg.bridge_distractors  # each with a person of its own
    town_budget = n_chains * (2 if cfg.three_hop_fraction > 0 else 1) + cfg.answer_distractors
    if n_chains + singles + cfg.topical_distractors > min(len(works), len(people), len(towns)) \
            or town_budget + cfg.topical_distractors > len(towns):
        raise ValueError(f"synthetic: n_chains={n_chains} plus {singles + cfg.topical_distractors} single "
                         f"distractors exceed the entity vocabulary ({min(len(works), len(people), len(towns))} "
                         "of each type; a three-hop question takes two towns per chain)")
    ws, ps, ts = rng.sample(works, n_chains), rng.sample(people, n_chains), rng.sample(towns, n_chains)
    chains = list(zip(ws, ps, ts))
    w, p, t = chains[0]  # the gold chain; the others are distractors
    r = rng.random()
    if r >= one_hop_fraction:
        question, answer, intermediate, gold = f"{TWO_HOP} {w}", t, p, {"bridge", "answer"}
    elif r < one_hop_fraction / 2:
        question, answer, intermediate, gold = f"{BORN} {p}", t, None, {"answer"}
    else:
        question, answer, intermediate, gold = f"{CREATOR} {w}", p, None, {"bridge"}
    # drawn only when three-hop questions are on, so the other settings' data stay as they were; every question of
    # such a setting has the third passages (distractors unless it is three-hop), so its length tells nothing
    twins: list = [None] * n_chains
    three_hop = False
    if cfg.three_hop_fraction > 0:
        twins = rng.sample([x for x in towns if x not in ts], n_chains)
        three_hop = intermediate is not None and rng.random() < cfg.three_hop_fraction
    if three_hop:  # the reader's deep supervision learns both intermediate entities, in hop order
        question, answer, intermediate, gold = f"{THREE_HOP} {w}", twins[0], f"{p} {t}", {"bridge", "answer", "twin"}
    shortcut = (intermediate is not None and not three_hop and cfg.shortcut_fraction > 0
                and rng.random() < cfg.shortcut_fraction)
    ctxs = []
    for j, ((cw, cp, ct), twin) in enumerate(zip(chains, twins)):
        answer_text = f"{cw} {CREATED_BY} {cp} {BORN_IN} {ct}" if shortcut else f"{cp} {BORN_IN} {ct}"
        texts = [("bridge", f"{cw} {CREATED_BY} {cp}"), ("answer", answer_text)]
        texts += [("twin", f"{ct} {TWINNED_WITH} {twin}")] if twin else []
        for kind, text in texts:
            is_gold = j == 0 and kind in gold
            for _ in range(cfg.gold_copies if is_gold else 1):
                ctxs.append(Passage(title="", text=text, is_gold=is_gold, has_answer=answer in text.split()))
    if singles:  # entities outside every chain, so a single distractor never completes a chain
        free_w = rng.sample([x for x in works if x not in ws], cfg.bridge_distractors)
        free_p = rng.sample([x for x in people if x not in ps], singles)
        free_t = rng.sample([x for x in towns if x not in ts and x not in twins], cfg.answer_distractors)
        texts = [f"{p_} {BORN_IN} {t_}" for p_, t_ in zip(free_p, free_t)]
        texts += [f"{w_} {CREATED_BY} {p_}" for w_, p_ in zip(free_w, free_p[cfg.answer_distractors :])]
        ctxs += [Passage(title="", text=t, is_gold=False, has_answer=answer in t.split()) for t in texts]
    if cfg.topical_distractors:  # the question's entity (its last word) with another relation, a town of its own
        entity = question.split()[-1]
        used = set(ts) | {p.text.split()[-1] for p in ctxs}
        free_t = rng.sample([x for x in towns if x not in used], cfg.topical_distractors)
        relation = LIVES_IN if entity in people else SET_IN
        ctxs += [Passage(title="", text=f"{entity} {relation} {t_}", is_gold=False, has_answer=answer == t_)
                 for t_ in free_t]
    rng.shuffle(ctxs)
    return Record(id=qid, question=question, answers=[answer], ctxs=ctxs, intermediate=intermediate)


def question_kind(record: Record) -> str:
    """"one_hop", "shortcut" (two-hop, and its answer passage "W created-by P born-in T" names the question's work:
    the bridge adds nothing), "binding" (two-hop, its answer passage "P born-in T" does not name the work: only
    the bridge "W created-by P" says which of the answer-typed passages follows, so no reranker that scores each
    passage alone can pick it except by chance) or "three_hop" (neither its second nor its third passage names the
    work). ValueError for a two-hop record without a gold answer passage."""
    if record.intermediate is None:
        return "one_hop"
    if record.question.split()[0] == THREE_HOP:
        return "three_hop"
    answer = next((c for c in record.ctxs if c.is_gold and c.has_answer), None)
    if answer is None:
        raise ValueError(f"question {record.id}: a two-hop question without a gold answer-bearing passage")
    return "shortcut" if CREATED_BY in answer.text.split() else "binding"


def generate(cfg, n: int, seed: int, n_chains: int | None = None, prefix: str = "q") -> list[Record]:
    """n questions, deterministic in `seed`. Used for the demo's train/dev files."""
    rng = random.Random(seed)
    chains = n_chains or cfg.n_chains
    return [make_question(rng, cfg, chains, f"{prefix}{i}", cfg.one_hop_fraction) for i in range(n)]


def chains_at_step(cfg, step: int) -> int:
    """Curriculum: cfg.curriculum = [[steps, n_chains], ...] run in order, then cfg.n_chains."""
    start = 0
    for steps, chains in cfg.curriculum:
        if step < start + steps:
            return chains
        start += steps
    return cfg.n_chains


def stream(cfg, seed: int, batch_size: int, start_step: int = 0) -> Iterator[list[Record]]:
    """Endless fresh batches for reader pre-training; batch s is a pure function of (seed, s), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    step = start_step
    while True:
        rng = random.Random(f"{seed}-{step}")
        chains = chains_at_step(cfg, step)
        yield [make_question(rng, cfg, chains, f"s{step}-{i}", cfg.one_hop_fraction) for i in range(batch_size)]
        step += 1


def vocabulary(cfg) -> list[str]:
    """Special tokens, relations, entities; the topical relations, then the three-hop words, come last and only when
    cfg uses them, so the ids of every other word (and the shipped demo reader's 103-word vocabulary) stay as they
    were."""
    works, people, towns = entity_names(cfg)
    topical = [SET_IN, LIVES_IN] if cfg.topical_distractors else []
    three_hop = [THREE_HOP, TWINNED_WITH] if cfg.three_hop_fraction > 0 else []
    return SPECIAL_TOKENS + [TWO_HOP, BORN, CREATOR, CREATED_BY, BORN_IN] + works + people + towns + topical + three_hop


def build_tokenizer(cfg):
    """Word-level tokenizer over the generator's vocabulary, built locally (no download).

    Single inputs encode as `[CLS] a [SEP]`, pairs as `[CLS] a [SEP] b [SEP]` (cross-encoder convention).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary(cfg))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[EOS]",
        bos_token="[BOS]",
        mask_token="[MASK]",
        additional_special_tokens=["[ANS]"],
        # transformers 5 returns token_type_ids (BERT segment ids of a pair) only when listed here.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def write_demo_data(cfg, out_dir: str | Path, seed: int) -> tuple[Path, Path]:
    """train.jsonl and dev.jsonl (FiD format with is_gold/has_answer) under out_dir; disjoint seeds."""
    from gr_train.data import save_records

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = out_dir / "train.jsonl"
    dev = out_dir / "dev.jsonl"
    save_records(generate(cfg, cfg.n_train, seed=seed * 2 + 1, prefix="train"), train)
    save_records(generate(cfg, cfg.n_dev, seed=seed * 2 + 2, prefix="dev"), dev)
    return train, dev
