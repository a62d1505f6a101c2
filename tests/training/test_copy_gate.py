"""The CPU gate (`training.copy_gate`): a toy of the RxT stack learns k = 1 recall of held-out values through its
memory, measured by generation and the whole-word rule, with the memory-reset ablation near 0. It runs in
`make test` (about 3-4 CPU minutes on one core); `-m "not gate"` skips it during quick iterations."""

from __future__ import annotations

import pytest

from training.copy_gate import CopyGateConfig, main, parse_overrides, run_gate


@pytest.mark.gate
def test_toy_rxt_recalls_held_out_values_through_memory():
    config = CopyGateConfig()
    result = run_gate(config, log=lambda message: print(message, flush=True))
    summary = {k: v for k, v in result.items() if k not in ("model", "tokenizer", "config")}
    print(summary)
    assert result["steps"] == config.copy_steps + config.memory_steps, summary  # not cut short by max_seconds
    assert result["recall"] >= 0.80, summary
    assert result["recall_memory_reset"] <= 0.05, summary
    assert result["recall_in_context"] >= 0.50, summary  # it learnt the copy itself, not a value list


def test_overrides_parse_json_values_and_name_bad_items():
    assert parse_overrides(["lr=1e-3", "num_facts=[2, 4]", "groups=null", "stm_slots=256"]) == {
        "lr": 1e-3, "num_facts": (2, 4), "groups": None, "stm_slots": 256}
    with pytest.raises(ValueError, match="'lrate=1'.*FIELD one of"):
        parse_overrides(["lrate=1"])
    with pytest.raises(ValueError, match="'lr=fast'.*not JSON"):
        parse_overrides(["lr=fast"])
    with pytest.raises(SystemExit):  # argparse's usage error (exit 2), before any training
        main(["--set", "nope=1"])


def test_warm_data_overrides_the_memory_phase_dialogues_only():
    config = CopyGateConfig(**parse_overrides(['groups=null', 'num_facts=[2, 4]', 'warm_memory_steps=10',
                                               'warm_data={"groups": ["code"], "num_facts": 1}']))
    full, warm = config.synthetic(), config.synthetic(**config.warm_data)
    assert (full.groups, full.num_facts, full.max_lead) == (None, (2, 4), 1)
    assert (warm.groups, warm.num_facts, warm.max_lead) == (("code",), (1, 1), 0)  # one fact: nothing to lead


def test_eval_data_changes_the_held_out_episodes_only(monkeypatch):
    """``eval_data={"chain": 2}``: the held-out episodes ask a second fact after a first was answered; the
    training dialogues stay as ``data`` says (chain 1 here)."""
    import training.copy_gate as gate

    made: list = []
    real = gate.generate_episodes

    def recorded(config):
        made.append(config)
        return real(config)

    monkeypatch.setattr(gate, "generate_episodes", recorded)
    config = CopyGateConfig(**parse_overrides(['groups=["pet", "place"]', 'eval_data={"chain": 2}',
                                               "copy_steps=0", "memory_steps=1", "train_episodes=40",
                                               "eval_episodes=4", "max_new_tokens=2"]))
    result = gate.run_gate(config, log=lambda _: None)
    assert 0.0 <= result["recall"] <= 1.0
    chains = {(c.split, c.form): c.chain for c in made}
    assert chains[("train", "dialogue")] == 1
    assert chains[("eval", "dialogue")] == 2 and chains[("eval", "in_context")] == 2


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_chained_share_draws_memory_batches_from_two_fact_dialogues(monkeypatch, share):
    """``chained_share``: that share of the memory phase's batches comes from chain-2 dialogues (two segments:
    at least 4 turns; one fact at distance 0-1 without distractors: at most 3)."""
    import training.copy_gate as gate

    made: list = []
    turns: list[int] = []
    real_generate, real_collate = gate.generate_episodes, gate.collate_episodes

    def recorded(config):
        made.append(config)
        return real_generate(config)

    def collate(items, pad_id):
        turns.extend(len(item) for item in items)  # an item is the episode's list of tokenised turns
        return real_collate(items, pad_id)

    monkeypatch.setattr(gate, "generate_episodes", recorded)
    monkeypatch.setattr(gate, "collate_episodes", collate)
    config = CopyGateConfig(**parse_overrides(['groups=["pet", "place"]', f"chained_share={share}",
                                               "copy_steps=0", "copy_mix=0", "memory_steps=3", "batch_size=4",
                                               "train_episodes=40", "eval_episodes=2", "max_new_tokens=2"]))
    gate.run_gate(config, log=lambda _: None)
    train_chains = sorted(c.chain for c in made if c.split == "train" and c.form == "dialogue")
    assert train_chains == ([1, 2] if share else [1])  # the dialogues, (the chained ones)
    assert len(turns) == 12 and (min(turns) >= 4 if share else max(turns) <= 3)
