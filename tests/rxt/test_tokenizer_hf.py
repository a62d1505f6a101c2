"""The tokenizer as Hugging Face users load it: tokenizer_config.json names the special tokens, and its chat
template renders the interaction template, so the ids equal `InteractionTemplate`'s (with jinja2 alone, and with
transformers.PreTrainedTokenizerFast when it is installed)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from rxt.chat_template import render_chat
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi, I'm Ada. 😀"},
    {"role": "assistant", "content": " Hello Ada!", "reasoning_content": "greet"},
    {"role": "user", "content": "What is my name?"},
]


def _expected(template: InteractionTemplate) -> list[int]:
    return [*template.system_ids("You are terse."),
            *template.interaction_ids("Hi, I'm Ada. 😀", " Hello Ada!", think="greet"),
            *template.query_ids("What is my name?")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    tokenizer = RxTokenizer.default()
    tokenizer.save_pretrained(directory)
    return directory, tokenizer


def test_tokenizer_config_names_the_special_tokens_and_the_template(saved):
    directory, _ = saved
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")} == {
        "bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
    assert config["additional_special_tokens"] == ["[Q]", "[A]", "[T]", "[I]"]
    assert "[BOS][Q]" in config["chat_template"]
    assert json.loads((directory / "special_tokens_map.json").read_text())["eos_token"] == "[EOS]"


def test_chat_template_renders_the_interaction_template_ids(saved):
    directory, tokenizer = saved
    text = render_chat(CONVERSATION, add_generation_prompt=True)
    assert text == "[BOS][I]You are terse.[EOS][BOS][Q]Hi, I'm Ada. 😀[T]greet[A] Hello Ada![EOS][BOS][Q]What is my name?[A]"
    # What PreTrainedTokenizerFast does with the text: the tokenizer.json as saved, special strings parsed.
    plain = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert plain.encode(text, add_special_tokens=False).ids == _expected(InteractionTemplate(tokenizer))
    no_prompt = render_chat(CONVERSATION[:3])
    assert no_prompt.endswith("[A] Hello Ada![EOS]")


def test_unknown_role_is_an_error():
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="unknown role tool"):
        render_chat([{"role": "tool", "content": "x"}])


def test_pretrained_tokenizer_fast_gives_the_same_ids(saved):
    transformers = pytest.importorskip("transformers")
    directory, tokenizer = saved
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id, fast.unk_token_id, fast.mask_token_id) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id, tokenizer.mask_id)
    ids = fast.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == _expected(InteractionTemplate(tokenizer))
    assert fast.decode(tokenizer.encode("naïve 😀 text")) == "naïve 😀 text"
