"""The pure-torch sparse conv equals dense conv3d / conv_transpose3d on active sites: outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scene_kd.distill.sparseconv import (
    SparseConv3d,
    SparseConvTranspose3d,
    SparseTensor,
    SubmanifoldConv3d,
    build_kernel_map,
    downsample_coords,
    from_dense,
    pack_keys,
    sparse_conv,
    sparse_conv_reference,
    to_dense,
    unpack_keys,
    voxelize,
    weight_from_conv3d,
    weight_from_conv_transpose3d,
)

SHAPE = (6, 8, 4)


def random_sparse(seed: int, c: int = 3, batch: int = 2, density: float = 0.3, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, *shape, generator=g) < density
    coords = occ.nonzero().to(torch.int64)  # [V, 4] (b, x, y, z)
    coords = coords[torch.randperm(len(coords), generator=g)]  # order must not matter
    feats = torch.randn(len(coords), c, generator=g, dtype=torch.float64)
    return coords, feats


def dense_and_sparse_grads(coords, feats, weight_sparse, sparse_fn, dense_fn, out_coords, seed=1):
    """Run both paths with the same upstream gradient; return (out_s, out_d, dfeat_s, dfeat_d, dw_s, dw_d)."""
    x_s = feats.clone().requires_grad_(True)
    w_s = weight_sparse.clone().requires_grad_(True)
    out_s = sparse_fn(x_s, w_s)
    upstream = torch.randn(out_s.shape, generator=torch.Generator().manual_seed(seed), dtype=out_s.dtype)
    (out_s * upstream).sum().backward()

    x_d = feats.clone().requires_grad_(True)
    out_d, w_d = dense_fn(x_d)
    (out_d * upstream).sum().backward()
    return out_s, out_d, x_s.grad, x_d.grad, w_s.grad, w_d


@pytest.mark.parametrize("k", [3, 1])
def test_submanifold_matches_conv3d(k):
    coords, feats = random_sparse(0)
    w = torch.randn(5, 3, k, k, k, dtype=torch.float64)
    w_d = w.clone().requires_grad_(True)
    kmap = build_kernel_map(coords, coords, k)

    def dense_fn(x):
        out = F.conv3d(to_dense(coords, x, SHAPE, 2), w_d, padding=(k - 1) // 2)
        return from_dense(out, coords), w_d

    out_s, out_d, gx_s, gx_d, gw_s, gw_d = dense_and_sparse_grads(
        coords, feats, weight_from_conv3d(w), lambda x, ww: sparse_conv(x, ww, kmap), dense_fn, coords)
    torch.testing.assert_close(out_s, out_d)
    torch.testing.assert_close(gx_s, gx_d)
    torch.testing.assert_close(gw_s, weight_from_conv3d(gw_d.grad))


@pytest.mark.parametrize("k,pad", [(2, 0), (3, 1)])
def test_strided_conv_matches_conv3d(k, pad):
    coords, feats = random_sparse(1)
    out_coords = downsample_coords(coords, 2)
    w = torch.randn(4, 3, k, k, k, dtype=torch.float64)
    w_d = w.clone().requires_grad_(True)
    kmap = build_kernel_map(coords, out_coords, k, stride=2, padding=pad)

    def dense_fn(x):
        out = F.conv3d(to_dense(coords, x, SHAPE, 2), w_d, stride=2, padding=pad)
        return from_dense(out, out_coords), w_d

    out_s, out_d, gx_s, gx_d, gw_s, gw_d = dense_and_sparse_grads(
        coords, feats, weight_from_conv3d(w), lambda x, ww: sparse_conv(x, ww, kmap), dense_fn, out_coords)
    assert out_s.shape == (len(out_coords), 4)
    torch.testing.assert_close(out_s, out_d)
    torch.testing.assert_close(gx_s, gx_d)
    torch.testing.assert_close(gw_s, weight_from_conv3d(gw_d.grad))


@pytest.mark.parametrize("k,pad,outpad", [(2, 0, 0), (3, 1, 1)])
def test_transposed_conv_matches_conv_transpose3d(k, pad, outpad):
    fine, _ = random_sparse(2)
    coarse = downsample_coords(fine, 2)
    feats = torch.randn(len(coarse), 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    coarse_shape = tuple(s // 2 for s in SHAPE)
    w = torch.randn(3, 5, k, k, k, dtype=torch.float64)  # [Cin, Cout, k, k, k]
    w_d = w.clone().requires_grad_(True)
    kmap = build_kernel_map(fine, coarse, k, stride=2, padding=pad).transposed()

    def dense_fn(x):
        out = F.conv_transpose3d(to_dense(coarse, x, coarse_shape, 2), w_d, stride=2, padding=pad, output_padding=outpad)
        assert out.shape[2:] == SHAPE
        return from_dense(out, fine), w_d

    out_s, out_d, gx_s, gx_d, gw_s, gw_d = dense_and_sparse_grads(
        coarse, feats, weight_from_conv_transpose3d(w), lambda x, ww: sparse_conv(x, ww, kmap), dense_fn, fine)
    assert out_s.shape == (len(fine), 5)
    torch.testing.assert_close(out_s, out_d)
    torch.testing.assert_close(gx_s, gx_d)
    torch.testing.assert_close(gw_s, weight_from_conv_transpose3d(gw_d.grad))


def test_custom_function_equals_plain_autograd_and_gradcheck():
    coords, feats = random_sparse(4, c=2, density=0.4)
    kmap = build_kernel_map(coords, coords, 3)
    w = torch.randn(27, 2, 3, dtype=torch.float64)
    x1, w1 = feats.clone().requires_grad_(True), w.clone().requires_grad_(True)
    x2, w2 = feats.clone().requires_grad_(True), w.clone().requires_grad_(True)
    sparse_conv(x1, w1, kmap).square().sum().backward()
    sparse_conv_reference(x2, w2, kmap).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)
    small = coords[:20]
    kmap_small = build_kernel_map(small, downsample_coords(small), 2, stride=2)
    xs = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(8, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sparse_conv(a, b, kmap_small), (xs, ws))


def test_layers_down_up_roundtrip_matches_dense():
    """A SubM -> down -> up chain through the SparseTensor cache equals the dense chain."""
    torch.manual_seed(0)
    coords, feats = random_sparse(5, c=4)
    sub, down, up = SubmanifoldConv3d(4, 6, 3), SparseConv3d(6, 8), SparseConvTranspose3d(8, 5)
    for m in (sub, down, up):
        m.double()
    x = SparseTensor(coords, feats)
    y = up(down(sub(x)))
    assert y.stride == 1 and torch.equal(y.coords, coords)
    dense = to_dense(coords, feats, SHAPE, 2)
    w_sub = sub.weight.detach().reshape(3, 3, 3, 4, 6).permute(4, 3, 0, 1, 2)
    w_down = down.weight.detach().reshape(2, 2, 2, 6, 8).permute(4, 3, 0, 1, 2)
    w_up = up.weight.detach().reshape(2, 2, 2, 8, 5).permute(3, 4, 0, 1, 2)
    h = F.conv3d(dense, w_sub, padding=1)
    # submanifold: only active sites keep values before down-sampling
    mask = to_dense(coords, torch.ones(len(coords), 1, dtype=torch.float64), SHAPE, 2)
    h = F.conv3d(h * mask, w_down, stride=2)
    out = F.conv_transpose3d(h, w_up, stride=2)
    torch.testing.assert_close(y.feats, from_dense(out, coords))


def test_keys_and_voxelize():
    c = torch.tensor([[0, -5, 3, 7], [3, 100, -200, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(unpack_keys(pack_keys(c)), c)
    order = torch.argsort(pack_keys(c))
    assert order.tolist() == [0, 2, 1]  # batch-major ordering
    with pytest.raises(ValueError):
        pack_keys(torch.tensor([[0, 1 << 20, 0, 0]]))
    xyz = torch.tensor([[0.05, 0.05, 0.05], [0.09, 0.01, 0.0], [-0.05, 0.2, 0.0], [0.3, 0.3, 0.3]])
    vox, p2v = voxelize(xyz, 0.1)
    assert vox.tolist() == [[-1, 2, 0], [0, 0, 0], [3, 3, 3]]
    assert p2v.tolist() == [1, 1, 0, 2]
    with pytest.raises(ValueError):
        voxelize(xyz, 0.0)


def test_kernel_map_pairs_are_neighbours():
    coords, _ = random_sparse(6)
    kmap = build_kernel_map(coords, coords, 3)
    assert kmap.identity == 13
    offsets = torch.tensor([[a - 1, b - 1, c - 1] for a in range(3) for b in range(3) for c in range(3)])
    for k in range(27):
        s, e = kmap.ptr[k], kmap.ptr[k + 1]
        diff = coords[kmap.in_idx[s:e], 1:] - coords[kmap.out_idx[s:e], 1:]
        assert (diff == offsets[k]).all()
        assert (coords[kmap.in_idx[s:e], 0] == coords[kmap.out_idx[s:e], 0]).all()
    # symmetric neighbourhood: pair count of offset d equals that of -d
    counts = [kmap.ptr[k + 1] - kmap.ptr[k] for k in range(27)]
    assert counts == counts[::-1]
