"""Compact feature stores (scene_kd/feature_store.py): a mask mixture and low-rank codes answer every query as
the dense float32 rows they stand for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scene_kd.errors import RunStateError
from scene_kd.feature_store import DenseRows, LowRank, MaskMixture, as_rows, principal_basis
from scene_kd.field import FeatureField
from scene_kd.lift.config import FuseConfig
from scene_kd.lift.fuse import fuse_points
from scene_kd.query.relevancy import relevancy_from_similarities
from scene_kd.query.similarity import raw_dots, similarities
from tests.test_lift import _random_scene


def _unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def random_mixture(n=3000, m=400, d=48, parts=3, per_row=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = _unit(torch.randn(m, d, generator=g)).half().float()
    out = []
    for p in range(parts):
        lengths = torch.randint(0, per_row + 1, (n,), generator=g)
        lengths[torch.arange(n) % 7 == p] = 0  # some rows empty in some parts
        crow = torch.zeros(n + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(lengths, 0)
        nnz = int(crow[-1])
        out.append((crow.to(torch.int32), torch.randint(0, m, (nnz,), generator=g, dtype=torch.int32),
                    torch.rand(nnz, generator=g)))
    return MaskMixture(out, bank)


def dense_of(mix: MaskMixture) -> torch.Tensor:
    """The definition, written directly: row i = sum over parts and entries of val * bank[col]."""
    out = torch.zeros(mix.n, mix.dim, dtype=torch.float64)
    for crow, col, val in mix.parts:
        rows = torch.repeat_interleave(torch.arange(mix.n), (crow[1:] - crow[:-1]).long())
        out.index_add_(0, rows, val.double()[:, None] * mix.bank.double()[col.long()])
    return out


def test_mask_mixture_answers_as_its_dense_rows():
    mix = random_mixture()
    want = dense_of(mix)
    torch.testing.assert_close(mix.dense().double(), want, atol=1e-5, rtol=0)
    text = _unit(torch.randn(5, mix.dim))
    torch.testing.assert_close(mix.dots(text).double(), (want @ text.double().T).T, atol=1e-5, rtol=0)
    norm = want.norm(dim=1)
    inv = torch.where(norm > 0, 1 / norm, torch.zeros_like(norm))
    torch.testing.assert_close(mix.inv_norm().double(), inv, atol=1e-4, rtol=1e-5)
    assert (mix.inv_norm() == 0).any()  # the rows with no entries anywhere
    idx = torch.tensor([0, 17, mix.n - 1])
    torch.testing.assert_close(mix.rows(idx).double(), want[idx], atol=1e-5, rtol=0)
    basis = principal_basis(mix.bank, 8)
    torch.testing.assert_close(mix.project(basis).double(), want @ basis.double().T, atol=1e-5, rtol=0)


def test_low_rank_answers_as_its_decoded_rows_with_any_decoder():
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(2000, 6, generator=g).half()
    for decoder in (principal_basis(torch.randn(300, 32, generator=g), 6), torch.randn(6, 32, generator=g)):
        store = LowRank(codes, decoder)
        want = codes.double() @ decoder.double()
        text = _unit(torch.randn(3, 32, generator=g))
        torch.testing.assert_close(store.dots(text).double(), (want @ text.double().T).T, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(store.inv_norm().double(), 1 / want.norm(dim=1), atol=1e-4, rtol=1e-4)
    with pytest.raises(RunStateError, match="do not match"):
        LowRank(codes, torch.zeros(5, 32))


def test_principal_basis_is_orthonormal_and_spans_the_embeddings():
    g = torch.Generator().manual_seed(2)
    span = _unit(torch.randn(5, 40, generator=g))
    bank = torch.randn(500, 5, generator=g) @ span  # rank 5
    basis = principal_basis(bank, 5)
    torch.testing.assert_close(basis @ basis.T, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close((bank @ basis.T) @ basis, bank, atol=1e-4, rtol=0)  # nothing lost
    assert torch.equal(principal_basis(bank, 40), torch.eye(40)) and torch.equal(principal_basis(bank, 99), torch.eye(40))


def test_field_round_trips_every_store_and_queries_through_it(tmp_path):
    mix = random_mixture(n=500, d=16)
    codes = torch.randn(500, 4).half()
    basis = principal_basis(mix.bank, 4)
    field = FeatureField(positions=np.zeros((500, 3), np.float32), origin=np.zeros(3),
                         features={"fused": mix, "distilled": LowRank(codes, basis)}, teacher="t",
                         text_encoder="e", dim=16)
    field.save(tmp_path)
    back = FeatureField.load(tmp_path)
    assert back.features["fused"].kind == "mask-mixture" and back.features["distilled"].kind == "low-rank"
    assert (tmp_path / "field.json").read_text().count('"mask-mixture"') == 1
    torch.testing.assert_close(back.dense("fused"), mix.dense(), atol=2e-3, rtol=0)  # bank stored as float16
    assert torch.equal(back.features["distilled"].codes, codes)
    text = _unit(torch.randn(4, 16))
    for source in ("fused", "distilled", "ensemble"):
        sims = similarities(back, text, source=source)
        f, d = back.dense("fused"), back.dense("distilled")
        dense = {"fused": _unit(f) @ text.T, "distilled": _unit(d) @ text.T}
        if source != "ensemble":
            torch.testing.assert_close(sims, dense[source], atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="16-d"):
        raw_dots(back, "fused", torch.zeros(2, 8))


def test_tensor_assigned_to_a_field_becomes_dense_rows():
    field = FeatureField(positions=np.zeros((3, 3), np.float32), origin=np.zeros(3),
                         features={"fused": torch.eye(3)[:, :2]}, teacher="t", text_encoder="e", dim=2)
    field.features["distilled"] = torch.ones(3, 2)
    assert all(isinstance(v, DenseRows) for v in field.features.values())
    assert as_rows(field.features["fused"]) is field.features["fused"]


def test_relevancy_through_the_mask_mixture_is_within_0_01_of_dense_float32():
    xyz, cams, depths, masks, emb = _random_scene(7)
    emb = emb.half().float()
    cfg = FuseConfig(border_px=2)
    dense, cov, _ = fuse_points(xyz, cams, iter(depths), iter(masks), emb, cfg, output="dense")
    mix, cov2, _ = fuse_points(xyz, cams, iter(depths), iter(masks), emb, cfg, output="mixture")
    assert torch.equal(cov, cov2) and 0.5 < float((cov > 0).float().mean())
    text = _unit(torch.randn(5, emb.shape[1], generator=torch.Generator().manual_seed(4)))
    want = relevancy_from_similarities(dense @ text.T)
    kw = dict(positions=xyz, origin=np.zeros(3), teacher="t", text_encoder="e", dim=emb.shape[1])
    got = relevancy_from_similarities(similarities(FeatureField(features={"fused": mix}, **kw), text, source="fused"))
    assert float((got - want).abs().max()) < 1e-4  # exact to float32 rounding, far inside the 0.01 the issue asks
    # and through a saved and reloaded field (float16 bank on disk)
    f16 = relevancy_from_similarities(similarities(FeatureField(features={"fused": dense.half()}, **kw), text))
    assert float((f16 - want).abs().max()) < 0.01


def test_large_tensor_files_are_streamed_and_read_back_by_safetensors(tmp_path, monkeypatch):
    """save_tensors above STREAM_BYTES writes the format itself (no bytes copy of the tensors); safetensors'
    own reader gets every dtype, shape, value and the metadata back."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scene_kd import runio

    tensors = {"a.f16": torch.randn(7, 3).half(), "b.i32": torch.arange(11, dtype=torch.int32),
               "c.f32": torch.randn(5), "d.u8": torch.arange(3, dtype=torch.uint8), "e.bool": torch.tensor([True, False]),
               "f.i64": torch.arange(4), "g.empty": torch.zeros(0, 4)}
    monkeypatch.setattr(runio, "STREAM_BYTES", 0)
    runio.save_tensors(tmp_path / "s.safetensors", tensors, {"k": [1, "x"]})
    back, meta = runio.load_tensors(tmp_path / "s.safetensors")
    assert meta == {"k": [1, "x"]} and set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:  # the library reads ours
        assert f.metadata() == {"k": '[1, "x"]'} and all(torch.equal(f.get_tensor(k), tensors[k]) for k in tensors)
    save_file(tensors, str(tmp_path / "lib.safetensors"), metadata={"k": '[1, "x"]'})  # and we read the library's
    lib, lib_meta = runio.load_tensors(tmp_path / "lib.safetensors")
    assert lib_meta == meta and all(torch.equal(lib[k], tensors[k]) for k in tensors)
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "s.safetensors").read_bytes()[:-3])
    with pytest.raises(RunStateError, match="truncated"):
        runio.load_tensors(tmp_path / "bad.safetensors")
