"""`rxnn demo`: a scripted conversation with a `nano` RxT beside a stateless decoder of the same size.

For each turn it streams the RxT's answer and prints a table: the RxT's prompt length (only the query), time
to first token, answer time, the memory update (timed separately: it runs after the answer is delivered)
and the memory it holds; then the same for the stateless decoder, which re-reads the whole growing history
and holds a KV cache that grows with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rxt.chat import ReactiveChat
from rxt.chat_events import AnswerCompleted, MemoryUpdated, TokenGenerated
from rxt.classic import DecoderLM, matched_decoder_config
from rxt.config import RxTConfig
from rxt.generation import decode_steps
from rxt.model import RxT
from rxt.recall import recall_hit
from rxt.sampling import SamplingConfig
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer

# A fact in turn 1, unrelated turns, then the question: the shape of the synthetic memory dialogues the default
# model was trained on (training.data.synthetic, whose templates these are). "Sorvina" is a made-up name of the
# generator's held-out (eval) space: no training episode can state it (tests/rxnn_runtime/test_demo_script.py).
SCRIPT = (
    "My boss is called Sorvina.",
    "Any tips for sleeping better?",
    "What is 13 times 6?",
    "Do you have a tip for remembering names?",
    "What is my boss called?",
    "Thanks, that is all for today.",
)
FACT_VALUE = "Sorvina"
RECALL_TURN = 5  # 1-based: the turn that asks about the fact


@dataclass
class TurnTiming:
    prompt_tokens: int
    first_token_ms: float
    answer_ms: float
    update_ms: float
    memory_bytes: int


def default_model(tokenizer: RxTokenizer) -> tuple[RxT, bool]:
    """The packaged trained model when present, else a seeded untrained `nano` (returns model, trained?)."""
    from importlib.resources import files

    packaged = files("rxt") / "assets" / "default_model"
    if packaged.is_dir() and (packaged / "model.safetensors").is_file():
        return RxT.from_pretrained(str(packaged)), True
    torch.manual_seed(0)
    return RxT(RxTConfig.preset("nano", vocab_size=tokenizer.vocab_size)).eval(), False


def _stateless_baseline(model: RxT) -> DecoderLM:
    """A decoder-only LM of about the same parameter count, with room for the whole conversation."""
    config, _, _ = matched_decoder_config(
        model.config, max_seq_len=2048, at_least=True, max_layers_factor=4, self_attention="gqa"
    )
    return DecoderLM(config).eval()


def _time_stateless_turn(lm: DecoderLM, history: list[int], sampling: SamplingConfig, eos: int, pad: int):
    start = time.perf_counter()
    first = None
    answer: list[int] = []
    ids = torch.tensor([history])
    for step in decode_steps(lm.decoder, ids, None, sampling, eos_id=eos, pad_id=pad):
        first = first or time.perf_counter()
        token = int(step.tokens[0])
        if token == eos:
            break
        answer.append(token)
    end = time.perf_counter()
    kv_bytes = 2 * lm.config.num_layers * (len(history) + len(answer)) * lm.decoder.num_kv_heads * lm.config.head_dim * 4
    return answer, TurnTiming(len(history), (first - start) * 1e3, (end - start) * 1e3, 0.0, kv_bytes)


def run_demo(max_new_tokens: int = 24, print_fn=print) -> list[tuple[TurnTiming, TurnTiming]]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = RxTokenizer.default()
    model, trained = default_model(tokenizer)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    chat = ReactiveChat(model, tokenizer, sampling)
    baseline = _stateless_baseline(model)
    template = InteractionTemplate(tokenizer)
    print_fn(f"RxT nano: {model.num_parameters() / 1e6:.1f}M parameters, STM {tuple(chat.stm.shape)}")
    print_fn(f"Stateless baseline: {baseline.num_parameters() / 1e6:.1f}M parameters, re-reads the history")
    if not trained:
        print_fn(
            "NOTE: these weights are UNTRAINED (seeded random init): the answers are noise. The demo shows the "
            "event stream and the cost per turn, not quality."
        )
    history: list[int] = []
    rows = []
    for turn, query in enumerate(SCRIPT, start=1):
        print_fn(f"\n[turn {turn}] user: {query}")
        print_fn("  rxt: ", end="")
        start = time.perf_counter()
        first = None
        answer_ms = update_ms = 0.0
        answer_text = ""
        for event in chat.stream(query):
            if isinstance(event, TokenGenerated):
                first = first or time.perf_counter()
                print_fn(event.text, end="", flush=True)
            elif isinstance(event, AnswerCompleted):
                answered_at = time.perf_counter()
                answer_text = event.text
                answer_ms = (answered_at - start) * 1e3
            elif isinstance(event, MemoryUpdated):
                update_ms = (time.perf_counter() - answered_at) * 1e3
        first_ms = ((first or answered_at) - start) * 1e3
        stm_bytes = chat.stm.numel() * chat.stm.element_size()
        rxt_timing = TurnTiming(len(template.query_ids(query)), first_ms, answer_ms, update_ms, stm_bytes)
        history += template.query_ids(query)
        answer, base_timing = _time_stateless_turn(baseline, history, sampling, tokenizer.eos_id, tokenizer.pad_id)
        history += [*answer, tokenizer.eos_id]
        print_fn("")
        rows.append((rxt_timing, base_timing))
        if turn == RECALL_TURN:
            recalled = recall_hit(answer_text, FACT_VALUE)  # whole words, as every recall figure is measured
            print_fn(f"  (recall check: the answer {'names' if recalled else 'does NOT name'} {FACT_VALUE!r}, "
                     f"stated {RECALL_TURN - 1} turns earlier and now only in the STM)")
    _print_table(rows, print_fn)
    return rows


def _print_table(rows, print_fn) -> None:
    print_fn("\nPer-turn cost (CPU, ms). RxT's memory update runs after the answer is delivered.")
    header = (
        f"{'turn':>4} | {'RxT prompt':>10} {'first tok':>9} {'answer':>8} {'mem upd':>8} {'STM KiB':>8} |"
        f" {'LLM prompt':>10} {'first tok':>9} {'answer':>8} {'KV KiB':>8}"
    )
    print_fn(header)
    print_fn("-" * len(header))
    for i, (r, b) in enumerate(rows, start=1):
        print_fn(
            f"{i:>4} | {r.prompt_tokens:>10} {r.first_token_ms:>9.1f} {r.answer_ms:>8.1f} {r.update_ms:>8.1f}"
            f" {r.memory_bytes / 1024:>8.0f} | {b.prompt_tokens:>10} {b.first_token_ms:>9.1f} {b.answer_ms:>8.1f}"
            f" {b.memory_bytes / 1024:>8.0f}"
        )
