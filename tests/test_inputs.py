"""Text → token ids without a model (gr_train/inputs.py): the query prompts (reader.prompt plain | chat). The
readers' and rerankers' tokenize, which delegate here, are tested with their models (tests/test_reader.py,
tests/test_reader_prompts.py, tests/test_reranker.py)."""

import pytest
from test_reader_prompts import chat_tokenizer

from gr_train.inputs import query_prompts
from gr_train.reader import byte_level_tokenizer


def test_plain_prompt_is_the_original_format():
    tok = byte_level_tokenizer()
    (ids,) = query_prompts(tok, ["who?"], "plain", "ignored")
    assert tok.decode(ids) == "question: who?\nanswer:"


def test_chat_prompt_uses_the_tokenizers_template_with_the_instruction():
    tok = chat_tokenizer()
    (ids,) = query_prompts(tok, ["who?"], "chat", "Answer briefly.")
    assert tok.decode(ids) == "<|user|>Answer briefly.\nQuestion: who?\n<|assistant|>"
    with pytest.raises(ValueError, match="no chat template"):
        query_prompts(byte_level_tokenizer(), ["who?"], "chat", "x")


def test_a_chat_prompt_over_budget_loses_the_start_of_its_question_never_its_template():
    """The chat template's opening (a system prompt, the instruction) and its assistant header stay whole: only the
    question is cut, from the left."""
    from gr_train.inputs import CausalLMInputs

    tok = chat_tokenizer()
    question = "which river runs through the town where the author of the long road was born"
    full = query_prompts(tok, [question], "chat", "Answer briefly.")[0]
    inputs = CausalLMInputs(tok, None, passage_max_tokens=8, answer_max_tokens=4, prompt_max_tokens=len(full) - 20,
                            prompt="chat", instruction="Answer briefly.")
    ids = inputs.tokenize([question], [[("t", "x")]])["prompt_ids"][0]
    assert len(ids) == len(full) - 20
    assert tok.decode(ids) == f"<|user|>Answer briefly.\nQuestion: {question[20:]}\n<|assistant|>"
    assert inputs.truncations.counts["prompts"] == 1
