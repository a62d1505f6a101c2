"""AdamW parameter grouping (no decay on norms/biases/embeddings) and the warmup + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from rxt.classic import DecoderLM, EncoderLM
from rxt.config import TransformerConfig
from training.config import TrainConfig
from training.optim import build_optimizer, warmup_cosine_factor, warmup_cosine_schedule


def _groups_by_param(opt):
    return {id(p): g for g in opt.param_groups for p in g["params"]}


def test_decay_only_on_matrices_of_linear_layers():
    model = DecoderLM(TransformerConfig.preset("tiny"))
    cfg = TrainConfig(weight_decay=0.1)
    opt = build_optimizer(model, cfg)
    by_param = _groups_by_param(opt)
    all_params = [p for g in opt.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            wd = by_param[id(p)]["weight_decay"]
            if isinstance(module, (nn.Embedding, nn.RMSNorm, nn.LayerNorm)) or pname == "bias":
                assert wd == 0.0, f"{name}.{pname}"
            elif isinstance(module, nn.Linear) and p is not model.decoder.embedding.weight:
                assert wd == 0.1, f"{name}.{pname}"
    # the LM head is tied to the embedding: one parameter, no decay, listed once
    assert model.decoder.lm_head.weight is model.decoder.embedding.weight
    assert by_param[id(model.decoder.embedding.weight)]["weight_decay"] == 0.0


def test_biases_and_tied_mlm_head():
    model = EncoderLM(TransformerConfig.preset("tiny"))
    model.extra = nn.Linear(4, 4, bias=True)
    model.extra_norm = nn.LayerNorm(4)
    opt = build_optimizer(model, TrainConfig())
    by_param = _groups_by_param(opt)
    assert by_param[id(model.extra.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.extra.weight)]["weight_decay"] == 0.1
    assert by_param[id(model.extra_norm.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.mlm_head.weight)]["weight_decay"] == 0.0  # tied to the embedding
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_named_groups_lr_scales_and_frozen_params():
    model = DecoderLM(TransformerConfig.preset("tiny"))
    layers = list(model.decoder.layers.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in layers)]
    model.decoder.layers[0].attn_norm.weight.requires_grad_(False)
    opt = build_optimizer(model, TrainConfig(lr=1e-3), {"layers": layers, "rest": rest}, {"layers": 0.5})
    names = {g["name"]: g for g in opt.param_groups}
    assert set(names) == {"layers/decay", "layers/no_decay", "rest/no_decay"}
    assert names["layers/decay"]["lr"] == pytest.approx(5e-4)
    assert names["rest/no_decay"]["lr"] == pytest.approx(1e-3)
    listed = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.decoder.layers[0].attn_norm.weight) not in listed
    sched = warmup_cosine_schedule(opt, 0, 10, 0.1)
    assert names["layers/decay"]["lr"] / names["rest/no_decay"]["lr"] == pytest.approx(0.5)
    del sched


def test_duplicate_and_missing_parameters_are_errors():
    model = DecoderLM(TransformerConfig.preset("tiny"))
    params = list(model.parameters())
    with pytest.raises(ValueError, match="both group 'a' and group 'b'"):
        build_optimizer(model, TrainConfig(), {"a": params, "b": params[:1]})
    with pytest.raises(ValueError, match="in no parameter group"):
        build_optimizer(model, TrainConfig(), {"a": params[1:]})
    with pytest.raises(ValueError, match="unknown parameter group"):
        build_optimizer(model, TrainConfig(), {"a": params}, {"b": 2.0})
    # the same tied tensor listed twice in one group is fine (deduplicated)
    opt = build_optimizer(model, TrainConfig(), {"a": params + [model.decoder.lm_head.weight]})
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


def test_schedule_values():
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = warmup_cosine_schedule(opt, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)  # warmup start: 1/10
    assert lrs[9] == pytest.approx(1.0)  # warmup end
    assert lrs[10] == pytest.approx(1.0)  # cosine start
    assert lrs[60] == pytest.approx(0.55)  # halfway: min + (1 - min) / 2
    assert lrs[110] == pytest.approx(0.1)  # end
    assert lrs[119] == pytest.approx(0.1)  # stays at the floor
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(lrs[10:]))
    assert warmup_cosine_factor(35, 10, 110, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(opt, 20, 10)
