"""CUDA checks: the torch sparse conv on the GPU equals the CPU path; spconv (when installed) equals torch."""

from __future__ import annotations

import pytest
import torch

from scene_kd.distill.sparseconv import SparseTensor, build_kernel_map, sparse_conv
from scene_kd.distill.unet import StudentSpec, StudentUNet

pytestmark = pytest.mark.gpu


def _random_coords(n_side: int = 40, density: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(2, n_side, n_side, n_side, generator=g) < density
    return occ.nonzero().to(torch.int64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_sparse_conv_cuda_matches_cpu():
    coords = _random_coords()
    kmap_cpu = build_kernel_map(coords, coords, 3)
    kmap_gpu = build_kernel_map(coords.cuda(), coords.cuda(), 3)
    x = torch.randn(len(coords), 8, dtype=torch.float64)
    w = torch.randn(27, 8, 5, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True), x.cuda().requires_grad_(True)]
    ws = [w.clone().requires_grad_(True), w.cuda().requires_grad_(True)]
    outs = [sparse_conv(xs[0], ws[0], kmap_cpu), sparse_conv(xs[1], ws[1], kmap_gpu)]
    for o in outs:
        o.square().sum().backward()
    torch.testing.assert_close(outs[1].cpu(), outs[0])
    torch.testing.assert_close(xs[1].grad.cpu(), xs[0].grad)
    torch.testing.assert_close(ws[1].grad.cpu(), ws[0].grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_spconv_student_matches_torch_student():
    pytest.importorskip("spconv.pytorch")
    from scene_kd.distill.spconv_backend import SpconvStudentUNet

    spec = StudentSpec(out_dim=12, voxel_size=0.5, height_scale=4.0, ground_cell=16.0, use_rgb=True,
                       use_intensity=False, channels=(8, 16, 24), norm="batch")
    torch.manual_seed(0)
    ref = StudentUNet(spec).cuda().eval()
    for m in ref.modules():  # non-trivial norm statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    fast = SpconvStudentUNet.from_torch(ref).eval()
    coords = _random_coords(48, 0.04, seed=1)
    coords[:, 1:] -= 7  # negative coordinates are shifted inside the backend
    feats = torch.randn(len(coords), spec.in_dim)
    with torch.no_grad():
        a = ref(SparseTensor(coords.cuda(), feats.cuda()))
        b = fast(SparseTensor(coords.cuda(), feats.cuda()))
    torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)
    # gradients reach the shared-layout parameters
    fast.train()
    fast(SparseTensor(coords.cuda(), feats.cuda())).sum().backward()
    assert fast.stem[0].conv.weight.grad is not None
    assert set(fast.state_dict()) == set(ref.state_dict())
