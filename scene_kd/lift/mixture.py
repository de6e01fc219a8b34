"""Fusion into a mask mixture: the sparse counterpart of :class:`scene_kd.lift.fuse.GranularitySums`.

Same protocol (``add_rows`` per view, ``end_view``, ``result``) and the same arithmetic (per-granularity
normalisation when balancing, then a final normalisation), but nothing [N, D] is ever held: each granularity's
per-point weights over the mask embeddings are kept as a CSR matrix [N, M] (int32 indices, float32 weights) and
the normalisations scale those weights. The result is a :class:`scene_kd.feature_store.MaskMixture` whose
decoded rows equal the dense fusion's (test_feature_store.py compares both). Memory: 8 bytes per stored weight
plus, while a granularity is open, 12 bytes per pending one; a 10M-point tile seen ~20 times is ~2 GB instead
of the 20 GB of dense float32 512-d accumulators. Own code (the fusion is the project's core).
"""

from __future__ import annotations

import torch
from torch import Tensor

from scene_kd.errors import SceneKDError
from scene_kd.feature_store import CHUNK_ROWS, MaskMixture
from scene_kd.lift.levels import LevelStreams

_MAX_NNZ = 2**31 - 1


def _row_lengths(crow: Tensor, start: int, stop: int) -> Tensor:
    return (crow[start + 1 : stop + 1] - crow[start:stop]).to(torch.int64)


def _scale_rows(crow: Tensor, val: Tensor, scale: Tensor) -> None:
    """val[k] *= scale[row of k] for a CSR matrix, in row chunks (in place)."""
    n = crow.shape[0] - 1
    for s in range(0, n, 4 * CHUNK_ROWS):
        e = min(n, s + 4 * CHUNK_ROWS)
        a, b = int(crow[s]), int(crow[e])
        if b > a:
            val[a:b] *= torch.repeat_interleave(scale[s:e], _row_lengths(crow, s, e))


class MixtureSums(LevelStreams):
    """Streamed per-granularity sparse weights over ``embeddings`` [M, D]; ``result()`` -> MaskMixture.

    ``add_rows(key, rows, cols, vals, seen, level=...)``: one view's rows (unique, ascending) [n] with L entries
    each (cols [n, L] into the embeddings, vals [n, L] >= 0; zero entries are dropped); ``seen`` [n] marks the
    rows this view counts for in ``counts``. ``end_view(level)``: a view of that camera level has streamed
    past; after the last one (``views_per_level``) the level's granularities are closed (CSR built, rows
    normalised when ``balance``).
    """

    def __init__(self, n_rows: int, embeddings: Tensor, *, balance: bool = True,
                 views_per_level: dict[int, int] | None = None):
        super().__init__(views_per_level)
        self.n_rows = int(n_rows)
        self.bank = embeddings.to(torch.float32).contiguous()
        self.balance = balance
        self.pending: dict[str, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {}
        self.entries: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def add_rows(self, key: str, rows: Tensor, cols: Tensor, vals: Tensor, seen: Tensor, *,
                 level: int | None = None) -> None:
        self.open_key(key, level)
        if key not in self.pending:
            self.pending[key] = []
            self.entries[key] = torch.zeros(self.n_rows, dtype=torch.int64)
            self.counts[key] = torch.zeros(self.n_rows, dtype=torch.int32)
        if rows.numel() == 0:
            return
        self.counts[key][rows] += seen.to(torch.int32)
        keep = vals > 0
        per_row = keep.sum(dim=1)
        has = per_row > 0
        if not bool(has.any()):
            return
        r, k = rows[has], per_row[has]
        self.pending[key].append((r, k, cols[keep].to(torch.int32), vals[keep].to(torch.float32)))
        self.entries[key][r] += k

    def finish(self, key: str) -> None:
        pending = self.pending.pop(key, None)
        if pending is None:
            return
        lengths = self.entries.pop(key)
        crow = torch.zeros(self.n_rows + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=crow[1:])
        nnz = int(crow[-1])
        if nnz > _MAX_NNZ:
            raise SceneKDError(f"granularity {key} has {nnz:,} point-mask weights, more than int32 indices hold; "
                               "split the scene into tiles (`scene-kd batch --chunk-size`)")
        col = torch.empty(nnz, dtype=torch.int32)
        val = torch.empty(nnz, dtype=torch.float32)
        fill = crow[:-1].clone()
        while pending:
            r, k, c, v = pending.pop(0)  # views in order: within a row, entries keep view order
            first = torch.cumsum(k, 0) - k  # where each row's entries start in c
            pos = torch.repeat_interleave(fill[r] - first, k) + torch.arange(c.numel())
            col[pos] = c
            val[pos] = v
            fill[r] += k
        crow32 = crow.to(torch.int32)
        if self.balance:
            inv = MaskMixture([(crow32, col, val)], self.bank).inv_norm()
            _scale_rows(crow32, val, inv)
        self.parts.append((crow32, col, val))
        self.done.append(key)

    def result(self) -> MaskMixture:
        """The fused features: every granularity closed, rows normalised to unit length (zero where no mask)."""
        for key in list(self.pending):
            self.finish(key)
        if not self.parts:
            empty = torch.zeros(self.n_rows + 1, dtype=torch.int32)
            return MaskMixture([(empty, torch.zeros(0, dtype=torch.int32), torch.zeros(0))], self.bank)
        mixture = MaskMixture(self.parts, self.bank)
        inv = mixture.inv_norm()  # the 1/G of balancing cancels in this normalisation
        for crow, _, val in self.parts:
            _scale_rows(crow, val, inv)
        mixture._inv_norm = (inv > 0).to(torch.float32)  # unit rows now (to float32 rounding)
        return mixture
