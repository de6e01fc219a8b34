"""Optional spconv backend for the student (CUDA): the same network, the same parameters, spconv kernels.

``SpconvStudentUNet(spec)`` is a :class:`StudentUNet` whose sparse conv modules run on spconv
(``spconv.pytorch``, imported lazily; install the ``gpu`` extra). Its parameters keep our layout
([k^3, Cin, Cout] per conv) and names, so ``state_dict`` is interchangeable with the torch path: a student
trained on spconv is saved and loaded like any other. Each conv converts its weight to spconv's layout in
forward (differentiably), so gradients reach our parameters.

Inputs are our :class:`SparseTensor` (coords [V, 4] batch, x, y, z); they are shifted to non-negative,
stride-aligned indices and wrapped; outputs come back in the input's row order (spconv's inverse conv
restores the indices of its paired down conv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scene_kd.distill.sparseconv import SparseConv3d, SparseConvTranspose3d, SparseTensor, SubmanifoldConv3d
from scene_kd.distill.unet import StudentSpec, StudentUNet
from scene_kd.errors import SceneKDError


def spconv_available() -> bool:
    """True when CUDA is available and spconv imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def _spconv():
    try:
        import spconv.pytorch as sp
    except Exception as e:  # ImportError, or a CUDA-mismatch error from the extension
        raise SceneKDError(f"the spconv backend needs spconv (pip install 'scene-kd[gpu]'): {e}") from None
    return sp


@dataclass
class SpTensor:
    """A spconv SparseConvTensor with our tensor stride; quacks like SparseTensor for norms/activations."""

    sp: Any
    stride: int

    @property
    def feats(self) -> Tensor:
        return self.sp.features

    def replace(self, feats: Tensor) -> SpTensor:
        return SpTensor(self.sp.replace_feature(feats), self.stride)


def _layout(weight_shape: tuple[int, ...], k: int, c_in: int, c_out: int) -> str:
    """Which of spconv's weight layouts a module uses: 'kkkio', 'kkkoi' or 'okkki'."""
    if tuple(weight_shape) == (k, k, k, c_in, c_out):
        return "kkkio"
    if tuple(weight_shape) == (c_out, k, k, k, c_in):
        return "okkki"
    if tuple(weight_shape) == (k, k, k, c_out, c_in):
        return "kkkoi"
    raise SceneKDError(f"unknown spconv weight layout {tuple(weight_shape)} for k={k}, {c_in}->{c_out}")


def _convert(w: Tensor, layout: str, k: int) -> Tensor:
    """Our weight [k^3, Cin, Cout] (offset index (dx*k+dy)*k+dz) to spconv's layout."""
    w5 = w.reshape(k, k, k, w.shape[1], w.shape[2])
    if layout == "kkkio":
        return w5.contiguous()
    if layout == "kkkoi":
        return w5.permute(0, 1, 2, 4, 3).contiguous()
    return w5.permute(4, 0, 1, 2, 3).contiguous()


class _SpconvConv(nn.Module):
    """Wraps one of our conv modules: keeps its ``weight`` Parameter, runs the matching spconv module."""

    def __init__(self, orig: nn.Module, kind: str):
        super().__init__()
        sp = _spconv()
        k = orig.kernel_size
        c_in, c_out = orig.weight.shape[1], orig.weight.shape[2]
        self.kind, self.k = kind, k
        self.conv_stride = getattr(orig, "stride", 1)
        self.weight = orig.weight
        self.bias = orig.bias
        if kind == "subm":
            mod = sp.SubMConv3d(c_in, c_out, k, padding=k // 2, bias=False)
        elif kind == "down":
            mod = sp.SparseConv3d(c_in, c_out, k, stride=self.conv_stride, padding=0, bias=False)
        else:
            mod = sp.SparseInverseConv3d(c_in, c_out, k, indice_key="unset", bias=False)
        self.layout = _layout(tuple(mod.weight.shape), k, c_in, c_out)
        del mod.weight  # the weight comes from our Parameter at every forward
        self.sp = mod

    def forward(self, x: SpTensor) -> SpTensor:
        self.sp.weight = _convert(self.weight, self.layout, self.k)
        if self.kind == "subm":
            self.sp.indice_key = f"subm{x.stride}_{self.k}"
            out_stride = x.stride
        elif self.kind == "down":
            self.sp.indice_key = f"down{x.stride}_{self.k}"
            out_stride = x.stride * self.conv_stride
        else:
            out_stride = x.stride // self.conv_stride
            self.sp.indice_key = f"down{out_stride}_{self.k}"
        out = self.sp(x.sp)
        if self.bias is not None:
            out = out.replace_feature(out.features + self.bias)
        return SpTensor(out, out_stride)


class SpconvStudentUNet(StudentUNet):
    """:class:`StudentUNet` on spconv kernels (CUDA); same parameter names and layout as the torch path."""

    def __init__(self, spec: StudentSpec):
        super().__init__(spec)
        _spconv()
        self._swap(self)

    def _swap(self, module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, SubmanifoldConv3d):
                setattr(module, name, _SpconvConv(child, "subm"))
            elif isinstance(child, SparseConv3d):
                setattr(module, name, _SpconvConv(child, "down"))
            elif isinstance(child, SparseConvTranspose3d):
                setattr(module, name, _SpconvConv(child, "up"))
            else:
                self._swap(child)

    def forward(self, x: SparseTensor) -> Tensor:  # type: ignore[override]
        sp = _spconv()
        align = 2 ** (len(self.spec.channels) - 1)
        coords = x.coords.clone()
        lo = torch.div(coords[:, 1:].min(0).values, align, rounding_mode="floor") * align
        coords[:, 1:] -= lo
        shape = ((coords[:, 1:].max(0).values // align + 1) * align).tolist()
        batch = int(coords[:, 0].max()) + 1
        st = sp.SparseConvTensor(x.feats.contiguous(), coords.to(torch.int32).contiguous(), shape, batch)
        return super().forward(SpTensor(st, 1))  # type: ignore[arg-type]

    @classmethod
    def from_torch(cls, model: StudentUNet) -> SpconvStudentUNet:
        """The same network (same weights and norm statistics) on spconv."""
        out = cls(model.spec)
        out.load_state_dict(model.state_dict())
        return out.to(next(model.parameters()).device).train(model.training)
