"""How a field holds its per-point features: dense rows, a mixture of mask embeddings, or low-rank codes.

A 1 km^2 LiDAR tile has 10-50M points; CLIP's embeddings are 512-d, so dense float16 features of a 10M-point
tile are 10 GB. Two facts make them small without losing anything a query needs:

* **Fused features are mixtures of mask embeddings** (:class:`MaskMixture`). Fusion (scene_kd/lift/fuse.py) makes
  every point's feature a weighted sum of the embeddings of the masks that cover it, and a point sees only a
  few masks (one per mask level per view) while a tile has far fewer masks than points. So the field stores the
  sparse per-point weights (one CSR matrix [N, M] per granularity, int32 indices, float32 weights) and the
  mask embeddings once (the *bank*, [M, D]): ``f_i = sum_g sum_k val_g[k] bank[col_g[k]]``. This is exact, not an
  approximation; a query touches each mask embedding once (``bank @ text``) and then each stored weight once.
  (The same observation underlies Dr. Splat's and OpenGaussian's per-Gaussian codebooks; we keep the masks'
  own embeddings as the codebook, so nothing is quantised.)
* **Distilled features are low-rank** (:class:`LowRank`): the student predicts ``r`` coefficients per point in
  an orthonormal basis of the teacher's embedding space (the top principal directions of the mask
  embeddings), decoded by a fixed linear map - the low-dimensional field + linear decoder of Feature 3DGS and
  LangSplat's compressed language features. ``f_i = codes_i @ decoder``; with ``r == D`` the basis is the
  identity and nothing changes.

Every store answers the same questions (the protocol :class:`FeatureRows`): ``dots(text)`` -> [P, N]
un-normalised dot products with P text embeddings, ``inv_norm()`` -> [N] (0 for zero rows), ``rows(index)`` ->
decoded float32 rows, ``block(start, stop)`` -> a decoded float32 block, ``project(basis)`` -> [N, r] float32
coordinates in an orthonormal basis (distillation targets), ``tensors(prefix)`` for safetensors and
``from_tensors``. Own code: no library stores a sparse mixture of embeddings with this query.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from scene_kd.errors import RunStateError

CHUNK_ROWS = 65536
"""Rows decoded at a time (bounds the float32 temporaries of norms, blocks and projections)."""

KINDS = ("dense", "mask-mixture", "low-rank")


class FeatureRows(Protocol):
    kind: str

    @property
    def n(self) -> int: ...
    @property
    def dim(self) -> int: ...
    def dots(self, text: Tensor) -> Tensor: ...
    def inv_norm(self) -> Tensor: ...
    def rows(self, index: Tensor) -> Tensor: ...
    def block(self, start: int, stop: int) -> Tensor: ...
    def project(self, basis: Tensor) -> Tensor: ...
    def tensors(self, prefix: str) -> dict[str, Tensor]: ...
    def nbytes(self) -> int: ...


def _inv_norms(norms: Iterator[tuple[int, int, Tensor]], n: int) -> Tensor:
    """[n] float32 1 / norm (0 for zero rows) from (start, stop, row norms) blocks; RunStateError naming how
    many rows have NaN/Inf values."""
    inv = torch.empty(n, dtype=torch.float32)
    bad = 0
    for s, e, norm in norms:
        finite = torch.isfinite(norm)
        bad += int((~finite).sum())
        inv[s:e] = torch.where(finite & (norm > 0), 1.0 / norm.clamp_min(1e-30), torch.zeros_like(norm))
    if bad:
        raise RunStateError(f"features have {bad} row(s) with NaN/Inf values")
    return inv


def _blocks(n: int, chunk: int = CHUNK_ROWS) -> Iterator[tuple[int, int]]:
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


class _Store:
    """Shared behaviour: ``dense()`` and cached ``inv_norm()`` from ``block``."""

    _inv_norm: Tensor | None

    def dense(self) -> Tensor:
        """All rows decoded, [N, D] float32 (small fields and tests; a 10M x 512 field is 20 GB)."""
        out = torch.empty(self.n, self.dim, dtype=torch.float32)
        for s, e in _blocks(self.n):
            out[s:e] = self.block(s, e)
        return out

    def inv_norm(self) -> Tensor:
        """[N] float32 1 / ||f_i|| (0 for zero rows); RunStateError for NaN/Inf rows. Cached."""
        if self._inv_norm is None:
            self._inv_norm = _inv_norms(((s, e, self.block(s, e).norm(dim=1)) for s, e in _blocks(self.n)), self.n)
        return self._inv_norm

    def project(self, basis: Tensor) -> Tensor:
        """[N, r] float32 coordinates ``f_i @ basis.T`` in the basis [r, D]."""
        basis = basis.to(torch.float32)
        out = torch.empty(self.n, basis.shape[0], dtype=torch.float32)
        for s, e in _blocks(self.n):
            out[s:e] = self.block(s, e) @ basis.T
        return out


@dataclass(eq=False)
class DenseRows(_Store):
    """Plain rows [N, D] (float16 on disk): Gaussian fields, old runs, small scenes."""

    data: Tensor
    kind: str = "dense"
    _inv_norm: Tensor | None = field(default=None, repr=False)

    n = property(lambda self: int(self.data.shape[0]))
    dim = property(lambda self: int(self.data.shape[1]))

    def dots(self, text: Tensor) -> Tensor:
        t = text.to(self.data.device, torch.float32)
        out = torch.empty(t.shape[0], self.n, dtype=torch.float32, device=self.data.device)
        for s, e in _blocks(self.n):
            out[:, s:e] = t @ self.data[s:e].to(torch.float32).T
        return out

    def rows(self, index: Tensor) -> Tensor:
        return self.data[index].to(torch.float32)

    def block(self, start: int, stop: int) -> Tensor:
        return self.data[start:stop].to(torch.float32)

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {prefix: self.data.to(torch.float16)}

    def nbytes(self) -> int:
        return self.data.numel() * 2


@dataclass(eq=False)
class MaskMixture(_Store):
    """Fused features as sparse weights over mask embeddings (see the module docstring).

    ``parts``: one (crow [N+1] int32, col [nnz] int32, val [nnz] float32) CSR matrix [N, M] per granularity;
    ``bank``: [M, D] float32 mask embeddings (float16 on disk; fusion computed the weights from the same
    float16-rounded values, so decoded rows are unit vectors to float32 precision).
    """

    parts: list[tuple[Tensor, Tensor, Tensor]]
    bank: Tensor
    kind: str = "mask-mixture"
    _inv_norm: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.bank = self.bank.to(torch.float32).contiguous()
        for crow, col, val in self.parts:
            if crow.shape[0] != self.parts[0][0].shape[0] or col.shape != val.shape or int(crow[-1]) != col.numel():
                raise RunStateError("mask-mixture features: inconsistent CSR parts")

    n = property(lambda self: int(self.parts[0][0].shape[0]) - 1 if self.parts else 0)
    dim = property(lambda self: int(self.bank.shape[1]))

    def nnz(self) -> int:
        return sum(int(c.numel()) for _, c, _ in self.parts)

    def _csr(self, part: tuple[Tensor, Tensor, Tensor], start: int = 0, stop: int | None = None) -> Tensor:
        crow, col, val = part
        stop = self.n if stop is None else stop
        a, b = int(crow[start]), int(crow[stop])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(crow[start : stop + 1] - a, col[a:b], val[a:b], (stop - start, self.bank.shape[0]))

    def _apply(self, mat: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """sum over parts of W[start:stop] @ mat ([M, K] -> [stop - start, K] float32), in row blocks so the
        temporaries stay small ([N, K] once, not once per part)."""
        stop = self.n if stop is None else stop
        out = torch.zeros(stop - start, mat.shape[1], dtype=torch.float32)
        step = max(CHUNK_ROWS, (2**26) // max(1, mat.shape[1]))  # ~256 MB of float32 per temporary
        for s in range(start, stop, step):
            e = min(stop, s + step)
            for part in self.parts:
                out[s - start : e - start] += self._csr(part, s, e) @ mat
        return out

    def dots(self, text: Tensor) -> Tensor:
        return self._apply(self.bank @ text.to(torch.float32).T).T.contiguous()

    def rows(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index).reshape(-1)
        return torch.stack([self.block(int(i), int(i) + 1)[0] for i in index]) if index.numel() else \
            torch.zeros(0, self.dim)

    def block(self, start: int, stop: int) -> Tensor:
        return self._apply(self.bank, start, stop)

    def project(self, basis: Tensor) -> Tensor:
        return self._apply(self.bank @ basis.to(torch.float32).T)

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        out = {f"{prefix}.bank": self.bank.to(torch.float16), f"{prefix}.inv_norm": self.inv_norm()}
        for g, (crow, col, val) in enumerate(self.parts):
            out.update({f"{prefix}.crow.{g}": crow, f"{prefix}.col.{g}": col, f"{prefix}.val.{g}": val})
        return out

    def nbytes(self) -> int:
        return self.bank.numel() * 2 + self.n * 4 + sum(c.numel() * 4 + v.numel() * 8 for c, v, _ in self.parts)


@dataclass(eq=False)
class LowRank(_Store):
    """Features ``codes @ decoder``: codes [N, r] (float16 on disk), decoder [r, D] float32 (orthonormal rows for
    the student's principal basis; any linear decoder works, norms go through its Gram matrix)."""

    codes: Tensor
    decoder: Tensor
    kind: str = "low-rank"
    _inv_norm: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.decoder = self.decoder.to(torch.float32).contiguous()
        if self.codes.ndim != 2 or self.decoder.ndim != 2 or self.codes.shape[1] != self.decoder.shape[0]:
            raise RunStateError(f"low-rank features: codes {tuple(self.codes.shape)} do not match decoder "
                                f"{tuple(self.decoder.shape)}")

    n = property(lambda self: int(self.codes.shape[0]))
    dim = property(lambda self: int(self.decoder.shape[1]))

    def dots(self, text: Tensor) -> Tensor:
        small = self.decoder @ text.to(torch.float32).T  # [r, P]
        out = torch.empty(text.shape[0], self.n, dtype=torch.float32)
        for s, e in _blocks(self.n, 4 * CHUNK_ROWS):
            out[:, s:e] = (self.codes[s:e].to(torch.float32) @ small).T
        return out

    def inv_norm(self) -> Tensor:
        if self._inv_norm is None:
            gram = self.decoder @ self.decoder.T

            def norms():
                for s, e in _blocks(self.n, 4 * CHUNK_ROWS):
                    z = self.codes[s:e].to(torch.float32)
                    yield s, e, ((z @ gram) * z).sum(1).clamp_min(0).sqrt()

            self._inv_norm = _inv_norms(norms(), self.n)
        return self._inv_norm

    def rows(self, index: Tensor) -> Tensor:
        return self.codes[index].to(torch.float32) @ self.decoder

    def block(self, start: int, stop: int) -> Tensor:
        return self.codes[start:stop].to(torch.float32) @ self.decoder

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.codes": self.codes.to(torch.float16), f"{prefix}.decoder": self.decoder}

    def nbytes(self) -> int:
        return self.codes.numel() * 2 + self.decoder.numel() * 4


def as_rows(x: Any) -> FeatureRows:
    """A store as is; a tensor or array [N, D] as :class:`DenseRows`."""
    if isinstance(x, (DenseRows, MaskMixture, LowRank)):
        return x
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise RunStateError(f"features must be [N, D], got {tuple(t.shape)}")
    return DenseRows(t)


def from_tensors(tensors: dict[str, Tensor], prefix: str) -> FeatureRows | None:
    """The store saved under ``prefix`` by ``tensors(prefix)``; None when there is none."""
    if prefix in tensors:
        return DenseRows(tensors[prefix])
    if f"{prefix}.codes" in tensors:
        return LowRank(tensors[f"{prefix}.codes"], tensors[f"{prefix}.decoder"])
    if f"{prefix}.bank" in tensors:
        parts, g = [], 0
        while f"{prefix}.crow.{g}" in tensors:
            parts.append((tensors[f"{prefix}.crow.{g}"], tensors[f"{prefix}.col.{g}"], tensors[f"{prefix}.val.{g}"]))
            g += 1
        mixture = MaskMixture(parts, tensors[f"{prefix}.bank"])
        mixture._inv_norm = tensors.get(f"{prefix}.inv_norm")
        return mixture
    return None


def principal_basis(bank: Tensor, rank: int) -> Tensor:
    """[r, D] orthonormal rows spanning the top-``rank`` uncentred principal directions of the rows of ``bank``
    [M, D] (the eigenvectors of ``bank.T @ bank`` with the largest eigenvalues, signs fixed so each row's largest
    entry is positive); the identity when ``rank >= D``. torch.linalg.eigh."""
    bank = bank.to(torch.float64)
    d = bank.shape[1]
    if rank >= d:
        return torch.eye(d, dtype=torch.float32)
    gram = bank.T @ bank
    _, vecs = torch.linalg.eigh(gram)  # ascending
    top = vecs[:, -rank:].flip(1).T  # [r, D]
    sign = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
    return (top * sign).to(torch.float32).contiguous()
