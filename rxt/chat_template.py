"""The interaction template as a Jinja chat template, for ``tokenizer_config.json``.

``transformers.PreTrainedTokenizerFast.apply_chat_template(messages)`` renders the ``messages`` list (role /
content dicts) with it, then tokenizes the text with the special-token strings parsed as special ids, which
gives the ids of `rxt.template.InteractionTemplate`:

- ``system``    -> ``[BOS][I] content [EOS]`` (`InteractionTemplate.system_ids`: written into memory);
- ``user``      -> ``[BOS][Q] content``;
- ``assistant`` -> ``([T] reasoning) [A] content [EOS]`` (reasoning from ``reasoning_content`` or ``think``);
- ``add_generation_prompt=True`` ends the text with ``[A]`` after the last user message
  (`InteractionTemplate.query_ids`).

No spaces are inserted, as in `rxt.template`. An RxT reads one interaction at a time (its memory holds the
earlier ones), so a runtime sends it the last user turn; the whole rendered conversation is what a stateless
decoder (the baseline) reads. `render_chat` renders with ``jinja2`` alone, for users without ``transformers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rxt.special_tokens import SpecialTokens as S

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}" f"{S.BOS}{S.INTERNAL}" "{{ message['content'] }}" f"{S.EOS}"
    "{%- elif message['role'] == 'user' -%}" f"{S.BOS}{S.QUERY}" "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set reasoning = message.get('reasoning_content') or message.get('think') -%}"
    "{%- if reasoning -%}" f"{S.THINK}" "{{ reasoning }}" "{%- endif -%}"
    f"{S.ANSWER}" "{{ message['content'] }}" f"{S.EOS}"
    "{%- else -%}{{ raise_exception('unknown role ' ~ message['role'] ~ ': use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" f"{S.ANSWER}" "{%- endif -%}"
)
"""The Jinja source written as ``chat_template`` into ``tokenizer_config.json``."""


def render_chat(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """`CHAT_TEMPLATE` rendered with ``jinja2`` the way ``transformers`` does (trimmed blocks, sandboxed)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(CHAT_TEMPLATE).render(
        messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt
    )


__all__ = ["CHAT_TEMPLATE", "render_chat"]
