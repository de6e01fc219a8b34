"""clip-grid: open_clip on a multi-scale grid of crops (LERF-style pyramid), pooled per region. No SAM.

Crops: for each scale s in ``grid_scales`` (fraction of the image's shorter side) a grid of square crops of side
s * min(H, W) overlapping by half, spanning the image. Each scale's crop embeddings form a coarse feature grid;
the dense per-pixel map is its bilinear interpolation between crop centres, averaged over scales.

Regions (our choice; no superpixels needed): one mask level per scale, coarse first. Level l's regions are the
cells of a grid whose cell size is scale l's crop stride, split into relative-depth slabs (``grid_depth_bin``,
10% of depth by default) so a car in front of a facade, or a roof above the ground, fall in different regions;
empty pixels (no point) belong to none; regions under ``min_mask_area`` pixels are dropped. A region's embedding
is the mean of the dense map over its pixels, computed exactly without materialising the [H, W, D] map (pixel
bilinear weights are pooled into a [regions, crops] matrix first), then L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.render.types import Render
from scene_kd.runio import config_hash
from scene_kd.teachers.base import ViewMasks, encode_by_image_size, l2_normalise
from scene_kd.teachers.clip import embed_crops, pixel_images
from scene_kd.teachers.clip_sam import ClipTeacherBase


def grid_centres(length: int, side: float) -> np.ndarray:
    """Crop centres along one axis: spaced <= side/2 apart, first/last crop flush with the image edges."""
    if side >= length:
        return np.array([length / 2.0])
    n = int(np.ceil((length - side) / (side / 2))) + 1
    return np.linspace(side / 2, length - side / 2, n)


def crop_grid(h: int, w: int, scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(x centres, y centres, side) of one scale's crops."""
    side = max(4.0, scale * min(h, w))
    return grid_centres(w, side), grid_centres(h, side), side


def region_image(depth: np.ndarray, valid: np.ndarray, cell: float, depth_bin: float, min_area: int) -> np.ndarray:
    """[H, W] int64 region index (-1 none): grid cells of size ``cell`` split by relative-depth slabs."""
    h, w = valid.shape
    ys, xs = np.mgrid[0:h, 0:w]
    ncx = int(np.ceil(w / cell))
    cell_id = (ys // cell).astype(np.int64) * ncx + (xs // cell).astype(np.int64)
    d = np.where(valid & np.isfinite(depth) & (depth > 0), depth, np.nan)
    slab = np.floor(np.log(d) / np.log1p(depth_bin)) if depth_bin > 0 else np.zeros_like(d)
    ok = valid & np.isfinite(slab)
    slab = np.where(ok, slab, 0).astype(np.int64)
    slab -= slab[ok].min() if ok.any() else 0
    key = np.where(ok, cell_id * (int(slab.max()) + 1) + slab, -1)
    out = np.full((h, w), -1, np.int64)
    if not ok.any():
        return out
    _, inverse, counts = np.unique(key[ok], return_inverse=True, return_counts=True)
    big = counts >= min_area
    new = np.where(big, np.cumsum(big) - 1, -1)
    out[ok] = new[inverse]
    return out


def bilinear_pool(region: torch.Tensor, xc: np.ndarray, yc: np.ndarray, num_regions: int) -> torch.Tensor:
    """[R, gy*gx] mean bilinear weight of each crop centre over each region's pixels (rows sum to 1)."""
    h, w = region.shape
    dev = region.device

    def axis(n_pix: int, centres: np.ndarray):
        c = torch.as_tensor(centres, dtype=torch.float32, device=dev)
        p = torch.arange(n_pix, device=dev, dtype=torch.float32) + 0.5
        if c.numel() == 1:
            z = torch.zeros(n_pix, dtype=torch.long, device=dev)
            return z, z, torch.ones(n_pix, device=dev)
        g = ((p - c[0]) / (c[1] - c[0])).clamp(0, c.numel() - 1)
        i0 = g.floor().long().clamp(max=c.numel() - 2)
        return i0, i0 + 1, 1 - (g - i0)

    x0, x1, wx = axis(w, xc)
    y0, y1, wy = axis(h, yc)
    gx = len(xc)
    ok = region >= 0
    r = region[ok]
    yy, xx = torch.nonzero(ok, as_tuple=True)
    pool = torch.zeros(num_regions, len(yc) * gx, device=dev)
    for yi, wyv in ((y0[yy], wy[yy]), (y1[yy], 1 - wy[yy])):
        for xi, wxv in ((x0[xx], wx[xx]), (x1[xx], 1 - wx[xx])):
            pool.index_put_((r, yi * gx + xi), wyv * wxv, accumulate=True)
    return pool / pool.sum(1, keepdim=True).clamp_min(1e-12)


class ClipGridTeacher(ClipTeacherBase):
    name = "clip-grid"

    def __init__(self, *, grid_scales: Sequence[float] = (0.5, 0.25, 0.125), grid_depth_bin: float = 0.1,
                 min_mask_area: int = 16, **cfg):
        super().__init__(**cfg)
        self.scales = tuple(float(s) for s in grid_scales)
        if not self.scales or any(not (0 < s <= 1) for s in self.scales):
            raise SceneKDError(f"grid_scales must be fractions in (0, 1], got {grid_scales}")
        self.depth_bin, self.min_area = float(grid_depth_bin), int(min_mask_area)
        self.cache_key = config_hash(self._identity(), self.scales, self.depth_bin, self.min_area)

    def crop_boxes(self, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """Per scale: (x centres, y centres, boxes [gy*gx, 4] pixel edges, row-major)."""
        out = []
        for s in self.scales:
            xc, yc, side = crop_grid(h, w, s)
            cy, cx = np.meshgrid(yc, xc, indexing="ij")
            b = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], -1).reshape(-1, 4)
            out.append((xc, yc, torch.from_numpy(b).float()))
        return out

    def encode_views(self, renders: Sequence[Render]) -> list[ViewMasks]:
        return encode_by_image_size(renders, self._encode_group)

    def _encode_group(self, renders: list[Render]) -> list[ViewMasks]:
        h, w = renders[0].rgb.shape[:2]
        images = pixel_images(self.bundle, [r.rgb for r in renders])
        dev = images.device
        grids = self.crop_boxes(h, w)
        per_view = sum(len(b) for _, _, b in grids)
        boxes = torch.cat([torch.cat([torch.full((len(b), 1), float(v)), b], 1)
                           for v in range(len(renders)) for _, _, b in grids]).to(dev)
        feats = embed_crops(self.bundle, images, boxes, batch_size=self.crop_batch_size)  # [V * per_view, D]
        out = []
        for v, r in enumerate(renders):
            f_view = feats[v * per_view : (v + 1) * per_view]
            valid = np.asarray(r.ids) >= 0 if r.ids is not None else np.ones((h, w), bool)
            depth = np.asarray(r.depth, np.float64) if r.depth is not None else np.ones((h, w))
            ids = np.full((len(grids), h, w), -1, np.int32)
            embs, levels = [], []
            for lv, (_, _, b) in enumerate(grids):
                side = float(b[0, 2] - b[0, 0])
                reg = region_image(depth, valid, max(2.0, side / 2), self.depth_bin, self.min_area)
                n = int(reg.max()) + 1
                if n == 0:
                    continue
                reg_t = torch.from_numpy(reg).to(dev)
                pooled = []
                start = 0
                for xs, ys, bs in grids:  # every scale's map pooled over this level's regions
                    g = len(bs)
                    pooled.append(l2_normalise(bilinear_pool(reg_t, xs, ys, n) @ f_view[start : start + g]))
                    start += g
                embs.append(l2_normalise(torch.stack(pooled).mean(0)))
                ids[lv] = np.where(reg >= 0, reg + len(levels), -1)
                levels += [lv] * n
            emb = torch.cat(embs).float().cpu() if embs else torch.zeros(0, self.dim)
            out.append(ViewMasks(mask_ids=ids, embeddings=emb.contiguous(), mask_level=np.asarray(levels, np.int32)))
        return out
