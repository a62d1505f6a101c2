import pytest
import torch
from torch import nn

from rxt.stm import ShortTermMemory, STMConfig

L, S, D = 2, 3, 4


def _stm(init: str = "normal", seed: int = 0, slots: int = S, **kw) -> ShortTermMemory:
    return ShortTermMemory(STMConfig(num_layers=L, num_slots=slots, dim=D, init=init, seed=seed, **kw))


def _state(batch: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(L, batch, S, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("init", ["learned", "normal"])
def test_initial_state_is_reproducible_and_seeded(init: str) -> None:
    m = _stm(init)
    a, b = m.initial_state(3), m.initial_state(3)
    assert a.shape == (L, 3, S, D)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a[:, 0] == a[:, 2]).all()  # every row starts from the same memory
    a.add_(1.0)  # a fresh tensor: writing to it changes neither the module nor the next call
    torch.testing.assert_close(m.initial_state(3), b, rtol=0, atol=0)
    torch.testing.assert_close(m.initial_state(1)[:, 0], m.initial, rtol=0, atol=0)
    torch.testing.assert_close(_stm(init).initial_state(3), b, rtol=0, atol=0)  # same seed, same values
    assert not torch.allclose(_stm(init, seed=1).initial_state(3), b)
    assert b.abs().sum() > 0


def test_initial_state_matches_documented_definition() -> None:
    std = 0.5
    g = torch.Generator().manual_seed(7)
    expected = torch.stack([torch.randn((L, D), generator=g) * std for _ in range(S)], dim=1)
    for init in ("normal", "learned"):
        torch.testing.assert_close(_stm(init, seed=7, init_std=std).initial, expected, rtol=0, atol=0)
    assert (_stm("zeros").initial_state(2) == 0).all()
    # slot s does not depend on the slot count
    torch.testing.assert_close(_stm(seed=7, slots=6).initial[:, :S], _stm(seed=7).initial, rtol=0, atol=0)


def test_learned_is_parameter_fixed_is_buffer_and_gradient_reaches_it() -> None:
    learned, fixed = _stm("learned"), _stm("normal")
    assert isinstance(learned.initial, nn.Parameter)
    assert [n for n, _ in learned.named_parameters()] == ["initial"]
    assert list(fixed.parameters()) == [] and "initial" in dict(fixed.named_buffers())
    assert "initial" in fixed.state_dict()
    learned.initial_state(2).pow(2).sum().backward()
    assert learned.initial.grad is not None and learned.initial.grad.abs().sum() > 0


def test_validate_names_expected_and_actual_shapes() -> None:
    m = _stm()
    m.validate(_state(2))
    m.validate(_state(2), batch_size=2)
    bad = {
        "ndim": torch.zeros(L, S, D),
        "layers": torch.zeros(L + 1, 2, S, D),
        "slots": torch.zeros(L, 2, S + 1, D),
        "dim": torch.zeros(L, 2, S, D + 1),
    }
    for what, t in bad.items():
        with pytest.raises(ValueError, match=r"\(L, B, S, D\) = \(2, B, 3, 4\)") as err:
            m.validate(t)
        assert str(tuple(t.shape)) in str(err.value), what
    with pytest.raises(ValueError, match=r"\(2, 5, 3, 4\); got \(2, 2, 3, 4\)"):
        m.validate(_state(2), batch_size=5)
    with pytest.raises(TypeError):
        m.validate([1, 2])


def test_gather_scatter_round_trip_and_out_of_place() -> None:
    m = _stm()
    stm = _state(4)
    before = stm.clone()
    got = m.gather_rows(stm, [2, 0])
    torch.testing.assert_close(got, stm[:, [2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(m.scatter_rows(stm, [2, 0], got), stm, rtol=0, atol=0)
    values = torch.randn(L, 2, S, D)
    new = m.scatter_rows(stm, torch.tensor([3, 1]), values)
    torch.testing.assert_close(m.gather_rows(new, [3, 1]), values, rtol=0, atol=0)
    torch.testing.assert_close(new[:, [0, 2]], stm[:, [0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(stm, before, rtol=0, atol=0)  # input untouched
    with pytest.raises(IndexError, match=r"row 4 .*batch size 4"):
        m.gather_rows(stm, [1, 4])
    with pytest.raises(IndexError, match=r"row -1 .*batch size 4"):
        m.scatter_rows(stm, [-1], values[:, :1])
    with pytest.raises(ValueError, match="duplicates"):
        m.scatter_rows(stm, [1, 1], values)
    with pytest.raises(ValueError, match=r"\(2, 3, 3, 4\); got \(2, 2, 3, 4\)"):
        m.scatter_rows(stm, [0, 1, 2], values)


def test_scatter_keeps_autograd() -> None:
    m = _stm()
    stm = _state(3).requires_grad_()
    values = torch.randn(L, 1, S, D, requires_grad=True)
    m.scatter_rows(stm, [1], values).sum().backward()
    assert (values.grad == 1).all()
    assert (stm.grad[:, 1] == 0).all() and (stm.grad[:, [0, 2]] == 1).all()


def test_export_import_round_trip() -> None:
    m = _stm()
    src, dst = _state(3, seed=1), _state(2, seed=2)
    mem = m.export_row(src, 1)
    assert mem.shape == (L, S, D) and mem.data_ptr() != src[:, 1].data_ptr()
    mem_copy = mem.clone()
    src.add_(1.0)  # export is a clone: later writes to the batch do not leak into it
    torch.testing.assert_close(mem, mem_copy, rtol=0, atol=0)
    out = m.import_row(dst, 0, mem)
    torch.testing.assert_close(m.export_row(out, 0), mem, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1], dst[:, 1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(L, S, D\) = \(2, 3, 4\); got \(2, 1, 3, 4\)"):
        m.import_row(dst, 0, mem.unsqueeze(1))
    with pytest.raises(IndexError, match="row 2 .*batch size 2"):
        m.import_row(dst, 2, mem)
    with pytest.raises(IndexError, match="row 5 .*batch size 3"):
        m.export_row(src, 5)


@pytest.mark.parametrize("init", ["learned", "zeros", "normal"])
def test_reset_rows(init: str) -> None:
    m = _stm(init)
    stm = _state(4)
    out = m.reset_rows(stm, [0, 3])
    fresh = m.initial_state(1)[:, 0]
    for r in (0, 3):
        torch.testing.assert_close(out[:, r], fresh, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1:3], stm[:, 1:3], rtol=0, atol=0)
    assert not torch.equal(out, stm)


def test_resize_both_ways() -> None:
    m = _stm(seed=3)
    big_module = _stm(seed=3, slots=5)
    stm = _state(2)
    small = m.resize(stm, 2)
    assert small.shape == (L, 2, 2, D)
    torch.testing.assert_close(small, stm[:, :, :2], rtol=0, atol=0)
    big = m.resize(stm, 5)
    assert big.shape == (L, 2, 5, D)
    torch.testing.assert_close(big[:, :, :S], stm, rtol=0, atol=0)
    # the new slots are the initial-state slots a 5-slot memory starts with, in every row
    for row in range(2):
        torch.testing.assert_close(big[:, row, S:], big_module.initial[:, S:], rtol=0, atol=0)
    # round trip: growing then shrinking gives the original back
    torch.testing.assert_close(m.resize(big, S), stm, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_slots"):
        m.resize(stm, 0)
    with pytest.raises(ValueError, match=r"\(2, B, S, 4\)"):
        m.resize(torch.zeros(L, 2, S, D + 1), 4)


@pytest.mark.parametrize("init", ["learned", "zeros", "normal"])
def test_resize_initial_both_ways(init: str) -> None:
    m = _stm(init, seed=3)
    ref5 = _stm(init, seed=3, slots=5)
    if init == "learned":
        with torch.no_grad():
            m.initial.add_(1.0)  # pretend it was trained
    trained = m.initial.detach().clone()
    m.resize_initial(5)
    assert m.num_slots == 5 and m.cfg.num_slots == 5 and m.initial.shape == (L, 5, D)
    assert isinstance(m.initial, nn.Parameter) == (init == "learned")
    torch.testing.assert_close(m.initial[:, :S].detach(), trained, rtol=0, atol=0)
    torch.testing.assert_close(m.initial[:, S:].detach(), ref5.initial[:, S:].detach(), rtol=0, atol=0)
    m.validate(torch.zeros(L, 1, 5, D))
    m.resize_initial(2)
    assert m.initial.shape == (L, 2, D) and m.cfg.num_slots == 2
    torch.testing.assert_close(m.initial.detach(), trained[:, :2], rtol=0, atol=0)
    assert isinstance(m.initial, nn.Parameter) == (init == "learned")
    assert ("initial" in dict(m.named_buffers())) == (init != "learned")


def test_bad_config() -> None:
    with pytest.raises(ValueError, match=r"STMConfig.init='random'.*learned.*zeros.*normal"):
        STMConfig(1, 1, 1, init="random")
    with pytest.raises(ValueError, match="STMConfig.num_slots=0"):
        STMConfig(1, 0, 1)
    with pytest.raises(ValueError, match="STMConfig.init_std"):
        STMConfig(1, 1, 1, init_std=-1.0)


@pytest.mark.parametrize("init", ["learned", "normal"])
def test_building_under_a_device_context_gives_the_same_seeded_values(init: str) -> None:
    # benchmarks build models straight on the GPU (`with torch.device("cuda")`); the seeded CPU generator must not
    # meet a tensor made on the context's device ("meta" stands in for the GPU here)
    with torch.device("meta"):
        built = _stm(init, seed=3)
    torch.testing.assert_close(built.initial.cpu(), _stm(init, seed=3).initial, rtol=0, atol=0)
