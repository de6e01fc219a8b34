"""Splat node arrays for the viewer (scene_kd/apps/viewer/splats.py)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from scene_kd.apps.viewer.splats import covariances_from, splat_node_arrays
from scene_kd.scene.synthetic import as_splats, make_tabletop


def test_covariance_is_rotated_scale_squared():
    R = Rotation.from_euler("xyz", [0.3, -0.2, 1.1])
    q = R.as_quat()[[3, 0, 1, 2]][None]
    s = np.log(np.array([[0.5, 0.2, 0.01]]))
    cov = covariances_from(q, s)[0]
    # the Gaussian's axis k is the k-th column of R, with variance scale_k^2
    for k, sk in enumerate((0.5, 0.2, 0.01)):
        axis = R.as_matrix()[:, k]
        assert np.isclose(axis @ cov @ axis, sk ** 2, rtol=1e-5)
    assert np.allclose(cov, cov.T)


def test_node_arrays_shapes_colours_and_subset():
    scene, _ = make_tabletop(seed=0, points=3000)
    g = as_splats(scene, seed=0)
    node = splat_node_arrays(g, max_gaussians=1000)
    assert node.centers.shape == (1000, 3) and node.covariances.shape == (1000, 3, 3)
    assert node.opacities.shape == (1000, 1) and np.allclose(node.opacities, 0.95, atol=1e-4)
    assert np.allclose(node.centers, g.means[node.index])
    assert np.allclose(node.rgbs * 255, g.rgb_from_dc()[node.index], atol=0.01)
    assert len(splat_node_arrays(g).index) == len(g)
