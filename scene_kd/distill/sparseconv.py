"""Pure-torch sparse 3D convolution: voxel hashing by sorted int64 keys, searchsorted kernel maps,
gather-GEMM-scatter with ``index_add_``.

A sparse tensor is a set of active voxels ``coords`` [V, 4] int64 (batch, x, y, z) with features
``feats`` [V, C]. Coordinates at tensor stride ``s`` are the input coordinates floor-divided by ``s``.

Convolution semantics (cross-correlation, like ``torch.nn.functional.conv3d``) for a kernel of size ``k``,
stride ``s`` and padding ``p`` (offsets enumerated ``itertools.product(range(k), repeat=3)``, index
``(dx * k + dy) * k + dz``; weights ``W`` [K = k^3, C_in, C_out])::

    out[o] = sum_d in[s * o + d - p] @ W[d]      (for active output sites o, missing inputs are zero)

* submanifold conv: s = 1, p = (k - 1) / 2, output sites = input sites;
* strided conv: s = 2 (k = 2, p = 0 by default), output sites = unique(input // 2);
* transposed conv: the adjoint of a strided conv, reusing its kernel map with in/out swapped, i.e.
  ``torch.nn.functional.conv_transpose3d`` evaluated on the finer tensor's active sites.

A kernel map is, for each offset, the pairs (in_idx, out_idx) with in[in_idx] contributing to out[out_idx].
Maps are cached per sparse tensor family (``SparseTensor.cache``) so every layer at a resolution reuses them.
The gather-GEMM-scatter runs in a custom autograd Function that recomputes gathers in backward (memory
O(V * C), not O(pairs * C)); :func:`sparse_conv_reference` is the same math in plain autograd ops (tests).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

COORD_BITS = 19
"""Bits per spatial axis in a packed key: coordinates must lie in [-2^18 + 8, 2^18 - 8)."""
BATCH_BITS = 63 - 3 * COORD_BITS  # 6 -> up to 64 batch entries
_COORD_OFFSET = 1 << (COORD_BITS - 1)
_COORD_MASK = (1 << COORD_BITS) - 1


# ---- voxelisation ------------------------------------------------------------------------------------------
def voxelize(xyz: Tensor, voxel_size: float) -> tuple[Tensor, Tensor]:
    """Voxel grid of points.

    xyz: [N, 3] float (scene units). Returns ``coords`` [V, 3] int64 (floor(xyz / voxel_size), sorted by
    packed key) and ``point_to_voxel`` [N] int64 (the row of ``coords`` each point falls in).
    """
    if voxel_size <= 0 or not math.isfinite(voxel_size):
        raise ValueError(f"voxel_size must be a positive number, got {voxel_size}")
    grid = torch.floor(xyz.to(torch.float64) / voxel_size).to(torch.int64)
    batch = torch.zeros(grid.shape[0], 1, dtype=torch.int64, device=grid.device)
    keys = pack_keys(torch.cat([batch, grid], dim=1))
    unique_keys, point_to_voxel = torch.unique(keys, return_inverse=True)
    return unpack_keys(unique_keys)[:, 1:], point_to_voxel


def pack_keys(coords: Tensor) -> Tensor:
    """[M, 4] int (batch, x, y, z) -> [M] int64 keys whose order is (batch, x, y, z) lexicographic."""
    c = coords.to(torch.int64)
    if c.numel():
        lo, hi = int(c[:, 1:].min()), int(c[:, 1:].max())
        if lo < -_COORD_OFFSET + 8 or hi >= _COORD_OFFSET - 8:
            raise ValueError(f"voxel coordinates {lo}..{hi} exceed the +-{_COORD_OFFSET - 8} range; use a larger voxel size")
        if int(c[:, 0].min()) < 0 or int(c[:, 0].max()) >= (1 << BATCH_BITS):
            raise ValueError(f"batch index must be in [0, {1 << BATCH_BITS})")
    return _pack_unchecked(c)


def _pack_unchecked(c: Tensor) -> Tensor:
    key = c[:, 0]
    for axis in (1, 2, 3):
        key = (key << COORD_BITS) | (c[:, axis] + _COORD_OFFSET)
    return key


def unpack_keys(keys: Tensor) -> Tensor:
    """Inverse of :func:`pack_keys`: [M] int64 -> [M, 4] int64."""
    z = (keys & _COORD_MASK) - _COORD_OFFSET
    y = ((keys >> COORD_BITS) & _COORD_MASK) - _COORD_OFFSET
    x = ((keys >> (2 * COORD_BITS)) & _COORD_MASK) - _COORD_OFFSET
    b = keys >> (3 * COORD_BITS)
    return torch.stack([b, x, y, z], dim=1)


# ---- kernel maps -------------------------------------------------------------------------------------------
@dataclass
class KernelMap:
    """Pairs per kernel offset, concatenated: offset k owns rows ``ptr[k]:ptr[k+1]`` of in_idx/out_idx.

    ``identity``: index of an offset whose pairs are (i, i) for every site (a submanifold conv's centre),
    handled as a plain matmul; its rows are left out of in_idx/out_idx. ``n_in``/``n_out``: site counts.
    """

    in_idx: Tensor  # [P] int64
    out_idx: Tensor  # [P] int64
    ptr: list[int]  # K + 1 boundaries
    n_in: int
    n_out: int
    identity: int | None = None

    @property
    def kernel_volume(self) -> int:
        return len(self.ptr) - 1

    def transposed(self) -> KernelMap:
        return KernelMap(self.out_idx, self.in_idx, self.ptr, self.n_out, self.n_in, self.identity)

    @property
    def pair_count(self) -> int:
        return int(self.in_idx.numel()) + (self.n_in if self.identity is not None else 0)


def kernel_offsets(kernel_size: int, device: torch.device | str = "cpu") -> Tensor:
    """[k^3, 3] int64 offsets (dx, dy, dz) in 0..k-1, in weight order."""
    r = range(kernel_size)
    return torch.tensor(list(itertools.product(r, r, r)), dtype=torch.int64, device=device).reshape(-1, 3)


def build_kernel_map(
    in_coords: Tensor, out_coords: Tensor, kernel_size: int, stride: int = 1, padding: int | None = None
) -> KernelMap:
    """Pairs (in, out) with in_coords[in] == stride * out_coords[out] + d - padding, per offset d.

    in_coords [Vi, 4], out_coords [Vo, 4] int64 (batch, x, y, z). ``padding`` defaults to (k-1)//2 for stride 1
    (submanifold) and 0 otherwise. Lookup: sorted packed input keys + ``torch.searchsorted``.
    """
    if padding is None:
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
    in_keys = pack_keys(in_coords)
    sorted_keys, perm = torch.sort(in_keys)
    base = out_coords.to(torch.int64).clone()
    base[:, 1:] = base[:, 1:] * stride - padding
    pack_keys(base)  # range check once; per-offset shifts stay within the margin
    n_in, n_out = in_coords.shape[0], out_coords.shape[0]
    same_sites = stride == 1 and n_in == n_out and torch.equal(in_coords, out_coords)
    out_arange = torch.arange(n_out, device=in_coords.device)
    ins, outs, ptr, identity = [], [], [0], None
    kernel_volume = kernel_size**3
    symmetric = same_sites and 2 * padding == kernel_size - 1
    for k, d in enumerate(kernel_offsets(kernel_size, in_coords.device).tolist()):
        if same_sites and d == [padding] * 3:
            identity = k
            ptr.append(ptr[-1])
            continue
        if symmetric and k > kernel_volume // 2:
            # offset -d is offset K-1-k, already searched: its pairs swapped are this offset's pairs
            mirror = kernel_volume - 1 - k
            ins.append(outs[mirror])
            outs.append(ins[mirror])
            ptr.append(ptr[-1] + int(ins[-1].numel()))
            continue
        q = base.clone()
        q[:, 1] += d[0]
        q[:, 2] += d[1]
        q[:, 3] += d[2]
        qk = _pack_unchecked(q)
        pos = torch.searchsorted(sorted_keys, qk).clamp_max_(max(n_in - 1, 0))
        hit = sorted_keys[pos] == qk if n_in else torch.zeros_like(qk, dtype=torch.bool)
        ins.append(perm[pos[hit]])
        outs.append(out_arange[hit])
        ptr.append(ptr[-1] + int(ins[-1].numel()))
    empty = torch.empty(0, dtype=torch.int64, device=in_coords.device)
    return KernelMap(torch.cat(ins) if ins else empty, torch.cat(outs) if outs else empty, ptr, n_in, n_out, identity)


def downsample_coords(coords: Tensor, stride: int = 2) -> Tensor:
    """Coarse active sites: unique(floor(coords / stride)) per batch, [Vo, 4] int64 sorted by key."""
    c = coords.to(torch.int64).clone()
    c[:, 1:] = torch.div(c[:, 1:], stride, rounding_mode="floor")
    return unpack_keys(torch.unique(pack_keys(c)))


# ---- gather-GEMM-scatter -----------------------------------------------------------------------------------
class _GatherGemmScatter(torch.autograd.Function):
    """out[out_idx_k] += feats[in_idx_k] @ W[k] for every offset k (see module docstring)."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        return _ggs_forward(feats, weight, kmap)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        feats, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(feats) if need_x else None
        grad_w = torch.zeros_like(weight) if need_w else None
        if kmap.identity is not None:
            k = kmap.identity
            if need_x:
                grad_x = grad_out @ weight[k].T
            if need_w:
                grad_w[k] = feats.T @ grad_out
        if kmap.in_idx.numel():
            g = grad_out.index_select(0, kmap.out_idx)  # [P, Cout], all offsets at once
            x = feats.index_select(0, kmap.in_idx) if need_w else None
            gx = g.new_empty(g.shape[0], feats.shape[1]) if need_x else None
            for k, s, e in _offset_ranges(kmap):
                if need_w:
                    torch.mm(x[s:e].T, g[s:e], out=grad_w[k])
                if need_x:
                    torch.mm(g[s:e], weight[k].T, out=gx[s:e])
            if need_x:
                grad_x.index_add_(0, kmap.in_idx, gx)
        return grad_x, grad_w, None


def _offset_ranges(kmap: KernelMap):
    for k in range(kmap.kernel_volume):
        s, e = kmap.ptr[k], kmap.ptr[k + 1]
        if e > s:
            yield k, s, e


def _ggs_forward(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """Gather all pairs once, one GEMM per offset into a [P, Cout] buffer, one scatter (index_add_)."""
    if kmap.identity is not None:
        out = feats @ weight[kmap.identity]
    else:
        out = feats.new_zeros(kmap.n_out, weight.shape[2])
    if kmap.in_idx.numel():
        x = feats.index_select(0, kmap.in_idx)
        y = x.new_empty(x.shape[0], weight.shape[2])
        for k, s, e in _offset_ranges(kmap):
            torch.mm(x[s:e], weight[k], out=y[s:e])
        out.index_add_(0, kmap.out_idx, y)
    return out


def sparse_conv(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """Gather-GEMM-scatter: feats [n_in, Cin], weight [K, Cin, Cout] -> [n_out, Cout] (custom autograd)."""
    if feats.shape[0] != kmap.n_in or weight.shape[0] != kmap.kernel_volume or weight.shape[1] != feats.shape[1]:
        raise ValueError(
            f"sparse_conv shapes: feats {tuple(feats.shape)}, weight {tuple(weight.shape)}, map {kmap.n_in}->{kmap.n_out} "
            f"with {kmap.kernel_volume} offsets"
        )
    return _GatherGemmScatter.apply(feats, weight, kmap)


def sparse_conv_reference(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """The same as :func:`sparse_conv` in plain differentiable torch ops (slower backward, more memory)."""
    out = feats.new_zeros(kmap.n_out, weight.shape[2])
    if kmap.identity is not None:
        out = out + feats @ weight[kmap.identity]
    for k in range(kmap.kernel_volume):
        s, e = kmap.ptr[k], kmap.ptr[k + 1]
        if e > s:
            out = out.index_add(0, kmap.out_idx[s:e], feats[kmap.in_idx[s:e]] @ weight[k])
    return out


# ---- sparse tensors and layers -----------------------------------------------------------------------------
@dataclass
class SparseTensor:
    """Active voxels ``coords`` [V, 4] int64 (batch, x, y, z) at tensor ``stride`` with ``feats`` [V, C].

    ``cache`` is shared by every tensor derived from the same input: coordinates per stride and kernel maps.
    """

    coords: Tensor
    feats: Tensor
    stride: int = 1
    cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[1] != 4 or self.feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"SparseTensor needs coords [V, 4] and feats [V, C]; got {tuple(self.coords.shape)}, {tuple(self.feats.shape)}")
        self.cache.setdefault(("coords", self.stride), self.coords)

    def replace(self, feats: Tensor) -> SparseTensor:
        return SparseTensor(self.coords, feats, self.stride, self.cache)

    def coords_at(self, stride: int) -> Tensor:
        return _coords_at(self.cache, stride)

    def kernel_map(self, kernel_size: int, stride: int = 1) -> KernelMap:
        """Submanifold map at this stride (stride=1), or the down map from this stride to stride * ``stride``."""
        return _cached_kernel_map(self.cache, self.stride, kernel_size, stride)


def _coords_at(cache: dict, stride: int) -> Tensor:
    key = ("coords", stride)
    if key not in cache:
        if stride < 2:
            raise KeyError(f"no coordinates at stride {stride}")
        cache[key] = downsample_coords(_coords_at(cache, stride // 2), 2)
    return cache[key]


def _cached_kernel_map(cache: dict, tensor_stride: int, kernel_size: int, conv_stride: int) -> KernelMap:
    key = ("map", tensor_stride, kernel_size, conv_stride)
    if key not in cache:
        in_coords = _coords_at(cache, tensor_stride)
        out_coords = in_coords if conv_stride == 1 else _coords_at(cache, tensor_stride * conv_stride)
        cache[key] = build_kernel_map(in_coords, out_coords, kernel_size, conv_stride)
    return cache[key]


def _init_weight(kernel_volume: int, c_in: int, c_out: int) -> nn.Parameter:
    w = torch.empty(kernel_volume, c_in, c_out)
    bound = 1.0 / math.sqrt(kernel_volume * c_in)
    nn.init.uniform_(w, -bound * math.sqrt(3), bound * math.sqrt(3))
    return nn.Parameter(w)


class SubmanifoldConv3d(nn.Module):
    """Stride-1 sparse conv whose outputs are the input's active sites. Weight [k^3, Cin, Cout]."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, bias: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = _init_weight(kernel_size**3, c_in, c_out)
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.kernel_size == 1:
            out = x.feats @ self.weight[0]
        else:
            out = sparse_conv(x.feats, self.weight, x.kernel_map(self.kernel_size, 1))
        return x.replace(out + self.bias if self.bias is not None else out)


class _StridedSparseConv(nn.Module):
    """Parameters shared by the strided conv and its transpose: weight [k^3, Cin, Cout], optional bias."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 2, stride: int = 2, bias: bool = False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.weight = _init_weight(kernel_size**3, c_in, c_out)
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None


class SparseConv3d(_StridedSparseConv):
    """Strided (down-sampling) sparse conv: outputs at unique(coords // stride). Weight [k^3, Cin, Cout]."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        kmap = x.kernel_map(self.kernel_size, self.stride)
        out = sparse_conv(x.feats, self.weight, kmap)
        if self.bias is not None:
            out = out + self.bias
        new_stride = x.stride * self.stride
        return SparseTensor(x.coords_at(new_stride), out, new_stride, x.cache)


class SparseConvTranspose3d(_StridedSparseConv):
    """Up-sampling: the transpose of :class:`SparseConv3d` onto the finer tensor's sites, reusing its map.

    ``forward(x, target_stride)``: x at stride s -> sites of stride s / ``stride``. Weight [k^3, Cin, Cout]
    (= ``conv_transpose3d`` weight [Cin, Cout, k, k, k] permuted).
    """

    def forward(self, x: SparseTensor) -> SparseTensor:
        fine_stride = x.stride // self.stride
        if fine_stride < 1 or fine_stride * self.stride != x.stride:
            raise ValueError(f"cannot up-sample a stride-{x.stride} tensor by {self.stride}")
        kmap = _cached_kernel_map(x.cache, fine_stride, self.kernel_size, self.stride).transposed()
        out = sparse_conv(x.feats, self.weight, kmap)
        if self.bias is not None:
            out = out + self.bias
        return SparseTensor(x.coords_at(fine_stride), out, fine_stride, x.cache)


# ---- dense helpers (tests, benchmarks) ---------------------------------------------------------------------
def to_dense(coords: Tensor, feats: Tensor, shape: tuple[int, int, int], batch_size: int = 1) -> Tensor:
    """Scatter sparse features into a dense [B, C, X, Y, Z] grid (coords must lie inside ``shape``)."""
    dense = feats.new_zeros(batch_size, feats.shape[1], *shape)
    c = coords.to(torch.int64)
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    return dense


def from_dense(dense: Tensor, coords: Tensor) -> Tensor:
    """Read [V, C] features at ``coords`` [V, 4] from a dense [B, C, X, Y, Z] grid."""
    c = coords.to(torch.int64)
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def weight_from_conv3d(w: Tensor) -> Tensor:
    """conv3d weight [Cout, Cin, k, k, k] -> sparse weight [k^3, Cin, Cout]."""
    return w.permute(2, 3, 4, 1, 0).reshape(-1, w.shape[1], w.shape[0])


def weight_from_conv_transpose3d(w: Tensor) -> Tensor:
    """conv_transpose3d weight [Cin, Cout, k, k, k] -> sparse weight [k^3, Cin, Cout]."""
    return w.permute(2, 3, 4, 0, 1).reshape(-1, w.shape[0], w.shape[1])
