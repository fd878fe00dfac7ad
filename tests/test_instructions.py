"""BIGRec instruction data: prompt text, response-only masking, cutoff and EOS, batching (real tokenizer)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairbench.data.instructions import (
    FAMILIES,
    IGNORE_INDEX,
    RESPONSE_CONTEXT,
    build_prompts,
    build_responses,
    generation_batch,
    item_texts,
    prompt_template,
    response_token_ids,
    tokenize_instructions,
    training_batch,
)
from fairbench.data.types import SequentialSamples
from fairbench.errors import UserError
from tests.helpers.tiny_lm import tokenizer, tokenizer_dir  # noqa: F401  (fixtures)

ITEMS = pd.DataFrame(
    {
        "item_id": ["1", "2", "3", "4", "5"],
        "title": ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat"],
        "genres": [["Animation", "Comedy"], ["Action"], [], ["Comedy"], ["Crime"]],
        "year": [1995.0, 1995.0, 1995.0, 1995.0, 1995.0],
    }
)


def samples() -> SequentialSamples:
    return SequentialSamples(
        user=np.array([0, 1, 2], dtype=np.int64),
        history=np.array([[-1, 0, 3], [4, 2, 1], [-1, -1, -1]], dtype=np.int32),
        target=np.array([1, 0, 4], dtype=np.int64),
        timestamp=np.zeros(3),
    )


def tokenized(tok, train_on_inputs: bool = False, cutoff_len: int = 512):
    texts = item_texts(ITEMS, "{title} ({year})")
    template = prompt_template("movie")
    prompts = build_prompts(samples(), texts, template)
    responses = build_responses(samples().target, texts, template)
    data = tokenize_instructions(
        tok, prompts, responses, cutoff_len=cutoff_len, train_on_inputs=train_on_inputs
    )
    return prompts, responses, data


def test_prompt_matches_bigrec_text_written_by_hand():
    texts = item_texts(ITEMS, "{title} ({year})")
    prompts = build_prompts(samples(), texts, prompt_template("movie"))
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n"
        "\n"
        "### Instruction:\n"
        "Given a list of movies the user has watched before, please recommend a new movie that the user "
        "likes to the user.\n"
        "\n"
        "### Input:\n"
        'The user has watched the following movies before:"Toy Story (1995)", "Get Shorty (1995)"\n'
        " \n"
        "\n"
        "### Response:\n"
    )
    assert prompts[0] == expected
    # history oldest -> newest, all three items; an empty history lists nothing
    assert '"Copycat (1995)", "Four Rooms (1995)", "GoldenEye (1995)"\n \n' in prompts[1]
    assert "The user has watched the following movies before:\n \n\n### Response:\n" in prompts[2]
    assert build_responses(samples().target, texts, prompt_template("movie")) == [
        '"GoldenEye (1995)"',
        '"Toy Story (1995)"',
        '"Copycat (1995)"',
    ]


def test_game_family_and_overrides():
    template = prompt_template("game", item="{title}", separator="; ")
    prompt = build_prompts(samples(), item_texts(ITEMS), template)[0]
    assert "Given a list of video games the user has played before, please recommend a new video" in prompt
    assert 'The user has played the following video games before:"Toy Story"; "Get Shorty"\n \n' in prompt
    assert set(FAMILIES) >= {"movie", "game", "book", "item"}


def test_list_columns_are_joined():
    texts = item_texts(ITEMS, "{title} [{genres}]")
    assert texts[0] == "Toy Story [Animation, Comedy]" and texts[2] == "Four Rooms []"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: item_texts(ITEMS, "{title} {director}"), "unknown item column"),
        (lambda: item_texts(ITEMS, "{0}"), "positional placeholder"),
        (lambda: item_texts(ITEMS.assign(title=["a", " ", "c", "d", "e"])), "empty text"),
        (lambda: prompt_template("podcast"), "family='podcast' is unknown"),
        (lambda: prompt_template("movie", prefix="x"), "unknown key"),
    ],
)
def test_bad_templates_are_user_errors(call, message):
    with pytest.raises(UserError, match=message) as error:
        call()
    if "unknown item column" in message:
        assert "item_id, title, genres, year" in str(error.value)  # the valid columns are listed


def test_tokenisation_masks_the_prompt(tokenizer):  # noqa: F811
    prompts, responses, data = tokenized(tokenizer)
    eos = tokenizer.eos_token_id
    for n, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids, labels = data.sample(n)
        expected = tokenizer(prompt + response)["input_ids"] + [eos]
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert ids.tolist() == expected
        assert data.prompt_lengths[n] == len(prompt_ids)
        assert ids[: len(prompt_ids)].tolist() == prompt_ids
        assert (labels[: len(prompt_ids)] == IGNORE_INDEX).all()
        assert labels[len(prompt_ids) :].tolist() == expected[len(prompt_ids) :]
        # the labelled tokens decode to the quoted title followed by EOS
        assert tokenizer.decode(labels[len(prompt_ids) : -1]) == response and labels[-1] == eos
    assert not data.truncated.any()


def test_train_on_inputs_labels_everything(tokenizer):  # noqa: F811
    _, _, data = tokenized(tokenizer, train_on_inputs=True)
    assert np.array_equal(data.labels, data.input_ids)


def test_cutoff_truncates_like_bigrec(tokenizer):  # noqa: F811
    prompts, responses, full = tokenized(tokenizer)
    cutoff = int(full.lengths.min()) - 3  # cuts every sample inside its response
    _, _, data = tokenized(tokenizer, cutoff_len=cutoff)
    assert (data.lengths == cutoff).all() and data.truncated.all()
    for n in range(len(data)):
        ids, _ = data.sample(n)
        assert ids.tolist() == full.sample(n)[0][:cutoff].tolist()  # no EOS: it does not fit
    # exactly one token short of fitting with EOS: EOS is appended, nothing truncated
    longest = int(full.lengths.max())
    _, _, data = tokenized(tokenizer, cutoff_len=longest)
    assert np.array_equal(data.input_ids, full.input_ids) and not data.truncated.any()
    with pytest.raises(UserError, match="cutoff_len"):
        tokenize_instructions(tokenizer, prompts, responses, cutoff_len=1)


def test_training_batch_is_right_padded(tokenizer):  # noqa: F811
    _, _, data = tokenized(tokenizer)
    pad = tokenizer.pad_token_id
    batch = training_batch(data, [2, 0], pad, pad_to_multiple_of=8)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width - 8 < data.lengths[[2, 0]].max() <= width
    for row, n in enumerate([2, 0]):
        ids, labels = data.sample(n)
        length = len(ids)
        assert batch["input_ids"][row, :length].tolist() == ids.tolist()
        assert batch["labels"][row, :length].tolist() == labels.tolist()
        assert (batch["input_ids"][row, length:] == pad).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (width - length)


def test_generation_batch_is_left_padded_prompts(tokenizer):  # noqa: F811
    prompts, _, data = tokenized(tokenizer)
    batch = generation_batch(data, [0, 1, 2], tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert width == data.prompt_lengths.max()
    for row, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt)["input_ids"]
        pad = width - len(prompt_ids)
        assert batch["input_ids"][row, pad:].tolist() == prompt_ids
        assert batch["attention_mask"][row].tolist() == [0] * pad + [1] * len(prompt_ids)
    # HF's own left padding gives the same batch
    reference = tokenizer(prompts, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == reference["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == reference["attention_mask"].tolist()


def test_responses_are_tokenised_in_context(tokenizer):  # noqa: F811
    prompts, responses, data = tokenized(tokenizer)
    in_context = response_token_ids(tokenizer, responses)
    for n, tokens in enumerate(in_context):
        ids, _ = data.sample(n)
        assert ids[data.prompt_lengths[n] : -1].tolist() == tokens  # what training sees, minus EOS
    # SmolLM2 merges the closing parenthesis and quote: tokenising the title alone would not show it
    assert tokenizer.convert_ids_to_tokens(in_context[0])[-1] == ')"'
    assert RESPONSE_CONTEXT.endswith("### Response:\n")
