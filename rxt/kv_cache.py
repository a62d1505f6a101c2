"""Preallocated self-attention key/value cache for incremental decoding.

One buffer for all layers, (L, B, H_kv, capacity, d), plus per-row lengths. Rows of a batch may hold
prompts of different lengths (right padding): row b's next token goes to position ``lengths[b]``, and its
queries see keys ``0 .. position`` only. Nothing is concatenated or reallocated per token, which is what
keeps a decode step's cost independent of how it was reached (and later lets a CUDA graph capture it).

``written`` is a host-side upper bound on the positions touched in any row. Attention slices keys to it,
so a step reads only the used part of the buffer without a device-to-host sync.

A *static* cache (``static=True``) always attends over the whole capacity (masked per row), so every decode step
has the same shapes and can be captured once as a CUDA graph and replayed. `row_view` gives a cache over some
rows that shares storage, so a new session can be prefilled into a free row while the others keep decoding.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        static: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"KVCache capacity={capacity} must be >= 1")
        shape = (num_layers, batch_size, num_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.k.device)
        self.capacity = capacity
        self.static = static
        self.written = 0

    @classmethod
    def _view(cls, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, static: bool) -> KVCache:
        view = cls.__new__(cls)
        view.k, view.v, view.lengths = k, v, lengths
        view.capacity, view.static, view.written = k.shape[3], static, 0
        return view

    def row_view(self, start: int, stop: int, *, static: bool | None = None, keys: int | None = None) -> KVCache:
        """A cache over rows ``start .. stop - 1`` sharing this cache's storage (writes land in this cache).

        Its ``written`` counter starts at 0: use it to prefill rows that were reset. ``static=False`` makes the
        view attend only over the positions written through it (a prefill then costs T x T, not T x capacity).
        ``keys`` limits the view to positions ``0 .. keys - 1`` (its capacity): a static view then attends over
        those only, the fixed shape of a graph captured for histories up to that length.
        """
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"row_view({start}, {stop}) is outside 0..{self.batch_size}")
        keys = self.capacity if keys is None else keys
        if not 1 <= keys <= self.capacity:
            raise ValueError(f"row_view keys={keys} must be within 1..{self.capacity} (capacity)")
        static = self.static if static is None else static
        return KVCache._view(
            self.k[:, start:stop, :, :keys], self.v[:, start:stop, :, :keys], self.lengths[start:stop], static
        )

    def key_count(self, num_new: int) -> int:
        """How many key positions a step over ``num_new`` new tokens attends to."""
        return self.capacity if self.static else self.written + num_new

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def positions_for(self, num_new: int) -> torch.Tensor:
        """Positions (B, num_new) of the next ``num_new`` tokens of every row."""
        if self.written + num_new > self.capacity:
            raise ValueError(
                f"KV cache overflow: {self.written} positions used + {num_new} new > capacity={self.capacity}"
            )
        return self.lengths.unsqueeze(1) + torch.arange(num_new, device=self.lengths.device)

    def write(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store K/V (B, H_kv, T, d) of new tokens at ``positions`` (B, T); return the keys/values to attend.

        The returned views cover positions ``0 .. key_count - 1``; the caller masks per row.
        """
        index = positions[:, None, :, None].expand_as(k_new)
        self.k[layer].scatter_(2, index, k_new)
        self.v[layer].scatter_(2, index, v_new)
        end = self.key_count(k_new.shape[2])
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_written: int, num_valid: torch.Tensor | None = None) -> None:
        """Commit a step: ``num_written`` positions per row were stored, of which ``num_valid`` (B,) are real."""
        self.written += num_written
        self.lengths += num_written if num_valid is None else num_valid  # in place: graph-capturable
        if self.static:
            # Idle rows of a static batch keep stepping on padding; pin them to the last position so they can
            # never index past the buffer. Live rows are kept below capacity by their owner (host-side count).
            self.lengths.clamp_(max=self.capacity - 1)

    def reset(self) -> None:
        self.lengths.zero_()
        self.written = 0
