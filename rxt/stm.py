"""Short-Term Memory (STM): its initial state and functional helpers on explicit state tensors.

The model's memory is a plain tensor of shape (L, B, S, D): L layers, B batch rows (one row per session),
S slots, width D. The runtime and the trainers pass that tensor around; this module owns only what every
conversation starts from (the initial state, (L, S, D)) and the row/slot operations on state tensors
(validate, gather/scatter rows, export/import one session's memory, reset rows, resize slots).

Initial state, exactly:

- ``init="zeros"``: all zeros, a buffer.
- ``init="normal"``: a buffer drawn once at construction from N(0, init_std^2) with a CPU float32
  ``torch.Generator().manual_seed(seed)``, slot by slot: for s = 0, 1, 2, ... the generator draws one (L, D)
  tensor (``torch.randn((L, D), generator=g) * init_std``), which becomes slot s of every layer. The values of
  slot s therefore depend only on (seed, init_std, L, D, s), not on the slot count, so resizing to more slots
  appends exactly the slots a larger memory would have started with.
- ``init="learned"``: an ``nn.Parameter`` initialised with the same seeded values as "normal", then trained.

It is never fresh noise per call: ``initial_state(B)`` returns the same values every time (and two modules
built with the same config hold identical values), so a conversation is reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

STM_INITS = ("learned", "zeros", "normal")

Rows = torch.Tensor | Sequence[int] | int


@dataclass
class STMConfig:
    """Shape and initial state of the Short-Term Memory.

    Attributes:
        num_layers: L, memory layers (one per decoder/encoder layer).
        num_slots: S, slots per layer.
        dim: D, slot width (the model width).
        init: "learned" (trainable parameter), "zeros" or "normal" (fixed seeded buffer).
        init_std: standard deviation of the seeded normal draw ("learned" and "normal").
        seed: seed of the generator that draws the initial state.
    """

    num_layers: int
    num_slots: int
    dim: int
    init: str = "learned"
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_slots", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"STMConfig.{name}={getattr(self, name)} must be >= 1")
        if self.init not in STM_INITS:
            raise ValueError(f"STMConfig.init={self.init!r} must be one of {STM_INITS}")
        if not self.init_std >= 0.0:
            raise ValueError(f"STMConfig.init_std={self.init_std} must be >= 0")


def _seeded_slots(cfg: STMConfig, start: int, stop: int) -> torch.Tensor:
    """Seeded initial values of slots ``start .. stop - 1``: (L, stop - start, D), CPU float32."""
    # explicitly on the CPU: the values must not depend on a surrounding `with torch.device(...)` (a model built
    # straight on the GPU), and the seeded generator is a CPU one
    out = torch.zeros(cfg.num_layers, max(stop - start, 0), cfg.dim, device="cpu")
    if cfg.init == "zeros" or stop <= start:
        return out
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    for s in range(stop):
        slot = torch.randn((cfg.num_layers, cfg.dim), generator=g, device="cpu")
        if s >= start:
            out[:, s - start] = slot * cfg.init_std
    return out


class ShortTermMemory(nn.Module):
    """Holds the initial STM state (L, S, D) and operates on explicit state tensors (L, B, S, D).

    ``initial`` is an ``nn.Parameter`` for ``init="learned"`` and a (persistent) buffer otherwise; see the
    module docstring for its exact values. Every helper is out-of-place: it returns a new tensor and never
    modifies the one passed in, so autograd through memory updates stays correct.
    """

    initial: torch.Tensor

    def __init__(self, cfg: STMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        values = _seeded_slots(cfg, 0, cfg.num_slots)
        if cfg.init == "learned":
            self.initial = nn.Parameter(values)
        else:
            self.register_buffer("initial", values)

    # -- shape ----------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    @property
    def num_slots(self) -> int:
        return self.cfg.num_slots

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def _expected(self, batch_size: int | None) -> str:
        b = "B" if batch_size is None else str(batch_size)
        return f"(L, B, S, D) = ({self.num_layers}, {b}, {self.num_slots}, {self.dim})"

    def validate(self, stm: torch.Tensor, batch_size: int | None = None) -> None:
        """Raise ValueError unless ``stm`` is (L, B, S, D) for this memory (and B == ``batch_size`` if given).

        A non-tensor raises TypeError.
        """
        if not isinstance(stm, torch.Tensor):
            raise TypeError(
                f"STM must be a tensor of shape {self._expected(batch_size)}; got {type(stm).__name__}"
            )
        shape = tuple(stm.shape)
        ok = (
            stm.dim() == 4
            and shape[0] == self.num_layers
            and shape[2] == self.num_slots
            and shape[3] == self.dim
            and (batch_size is None or shape[1] == batch_size)
        )
        if not ok:
            raise ValueError(f"STM must have shape {self._expected(batch_size)}; got {shape}")

    # -- initial state --------------------------------------------------------------------------------------
    def initial_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The initial memory for ``batch_size`` rows: (L, B, S, D), a fresh contiguous tensor.

        The same values every call. With ``init="learned"`` the result stays connected to the parameter, so a
        loss on the memory trains the initial state.
        """
        if batch_size < 0:
            raise ValueError(f"initial_state batch_size={batch_size} must be >= 0")
        init = self.initial.to(device=device, dtype=dtype)
        return init.unsqueeze(1).expand(-1, batch_size, -1, -1).clone(memory_format=torch.contiguous_format)

    def _initial_slots(self, start: int, stop: int) -> torch.Tensor:
        """Initial values of slots ``start .. stop - 1`` (L, n, D): the module's own state where it has those
        slots, the seeded values (see the module docstring) beyond them."""
        own = self.initial[:, start : min(stop, self.num_slots)]
        if stop <= self.num_slots:
            return own
        extra = _seeded_slots(self.cfg, max(start, self.num_slots), stop).to(self.initial)
        return torch.cat([own, extra], dim=1)

    # -- rows -----------------------------------------------------------------------------------------------
    @staticmethod
    def _rows(rows: Rows, batch_size: int, device: torch.device, *, unique: bool = False) -> torch.Tensor:
        if isinstance(rows, torch.Tensor):
            if rows.dtype.is_floating_point or rows.dtype == torch.bool or rows.dim() > 1:
                raise ValueError(
                    f"rows must be a 1-D integer tensor or a list of ints; got {rows.dtype} {rows.dim()}-D"
                )
            index = rows.reshape(-1).to(device=device, dtype=torch.long)
        else:
            index = torch.tensor(
                [rows] if isinstance(rows, int) else list(rows), dtype=torch.long, device=device
            )
        for r in index.tolist():
            if not 0 <= r < batch_size:
                raise IndexError(
                    f"STM row {r} is out of range for batch size {batch_size} (rows are 0 .. B - 1)"
                )
        if unique and index.unique().numel() != index.numel():
            raise ValueError(f"STM rows {index.tolist()} contain duplicates; each row may be written once")
        return index

    def gather_rows(self, stm: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The memory of ``rows``: (L, b, S, D), a new tensor (b = number of rows, order kept)."""
        self.validate(stm)
        return stm.index_select(1, self._rows(rows, stm.shape[1], stm.device))

    def scatter_rows(self, stm: torch.Tensor, rows: Rows, values: torch.Tensor) -> torch.Tensor:
        """A copy of ``stm`` with ``values`` (L, b, S, D) written into ``rows`` (b distinct rows).

        ``values`` is moved to ``stm``'s device and dtype.
        """
        self.validate(stm)
        index = self._rows(rows, stm.shape[1], stm.device, unique=True)
        expected = (self.num_layers, index.numel(), self.num_slots, self.dim)
        if not isinstance(values, torch.Tensor):
            raise TypeError(
                f"scatter_rows values must be a tensor (L, b, S, D) = {expected}; got {type(values).__name__}"
            )
        if tuple(values.shape) != expected:
            raise ValueError(
                f"scatter_rows values must have shape (L, b, S, D) = {expected}; got {tuple(values.shape)}"
            )
        return stm.index_copy(1, index, values.to(device=stm.device, dtype=stm.dtype))

    def export_row(self, stm: torch.Tensor, row: int) -> torch.Tensor:
        """One session's memory: (L, S, D), a clone that does not share storage with ``stm``."""
        self.validate(stm)
        index = self._rows(row, stm.shape[1], stm.device)
        return stm[:, int(index[0])].clone()

    def import_row(self, stm: torch.Tensor, row: int, memory: torch.Tensor) -> torch.Tensor:
        """A copy of ``stm`` with ``memory`` (L, S, D) written into ``row``."""
        expected = (self.num_layers, self.num_slots, self.dim)
        if not isinstance(memory, torch.Tensor):
            raise TypeError(
                f"import_row memory must be a tensor (L, S, D) = {expected}; got {type(memory).__name__}"
            )
        if tuple(memory.shape) != expected:
            raise ValueError(
                f"import_row memory must have shape (L, S, D) = {expected}; got {tuple(memory.shape)}"
            )
        return self.scatter_rows(stm, [row], memory.unsqueeze(1))

    def reset_rows(self, stm: torch.Tensor, rows: Rows) -> torch.Tensor:
        """A copy of ``stm`` with ``rows`` set back to the initial state."""
        self.validate(stm)
        index = self._rows(rows, stm.shape[1], stm.device, unique=True)
        fresh = self.initial_state(index.numel(), device=stm.device, dtype=stm.dtype)
        return self.scatter_rows(stm, index, fresh)

    # -- slots ----------------------------------------------------------------------------------------------
    def resize(self, stm: torch.Tensor, num_slots: int) -> torch.Tensor:
        """``stm`` (L, B, S_old, D) with ``num_slots`` slots: (L, B, num_slots, D), a new tensor.

        Shrinking keeps slots 0 .. num_slots - 1. Growing keeps every old slot and fills new slot s (in every
        row) with slot s of the initial state: this module's own initial state where it has slot s, otherwise
        the seeded value the module docstring defines (zeros for ``init="zeros"``). ``S_old`` may differ from
        this module's slot count, so ``resize`` and :meth:`resize_initial` may be called in either order.
        """
        if num_slots < 1:
            raise ValueError(f"resize num_slots={num_slots} must be >= 1")
        shape = tuple(stm.shape)
        if stm.dim() != 4 or shape[0] != self.num_layers or shape[3] != self.dim:
            raise ValueError(
                f"STM must have shape (L, B, S, D) = ({self.num_layers}, B, S, {self.dim}) to resize; "
                f"got {shape}"
            )
        old = shape[2]
        if num_slots <= old:
            return stm[:, :, :num_slots].clone()
        extra = self._initial_slots(old, num_slots).to(device=stm.device, dtype=stm.dtype)
        extra = extra.unsqueeze(1).expand(-1, shape[1], -1, -1)
        return torch.cat([stm, extra], dim=2)

    def resize_initial(self, num_slots: int) -> None:
        """Change this module's slot count (and ``cfg.num_slots``) to ``num_slots``.

        Shrinking keeps the first ``num_slots`` slots (learned values included). Growing appends the seeded
        initial values for the new slots. With ``init="learned"`` the parameter is replaced by a new one, so
        an optimizer built before must be rebuilt.
        """
        if num_slots < 1:
            raise ValueError(f"resize_initial num_slots={num_slots} must be >= 1")
        with torch.no_grad():
            if num_slots <= self.num_slots:
                values = self.initial[:, :num_slots].clone()
            else:
                values = self._initial_slots(0, num_slots).clone()
        self.cfg = dataclasses.replace(self.cfg, num_slots=num_slots)
        if self.cfg.init == "learned":
            self.initial = nn.Parameter(values, requires_grad=self.initial.requires_grad)
        else:
            self.initial = values  # assigning a tensor to a registered buffer name replaces the buffer

    def extra_repr(self) -> str:
        c = self.cfg
        return f"layers={c.num_layers}, slots={c.num_slots}, dim={c.dim}, init={c.init!r}, seed={c.seed}"
