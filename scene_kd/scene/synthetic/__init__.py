"""Procedural labelled scenes with ground truth: the test bed for every later stage.

``make_urban``: a city block (road with lane markings, sidewalks, buildings with flat/gable/hip roofs, trees,
parked cars, street lights and sign posts, lawns with a mound and a raised planter) on sloping terrain, *scanned*
by a simulated airborne LiDAR (four flight lines, near-nadir) and a mobile LiDAR (a profiler driving the road).
Points are exact ray hits, so density, occlusion and incidence effects come from the geometry: roofs are dense
from the air, facades sparse from the air but dense from the street, ground under cars is empty and ground under
tree crowns is sparse (crowns are porous volumes: each ray has an exponential free path inside them).

``make_tabletop``: a table with a mug (with handle), a bowl, a box, a bottle and a banana at random yaw and
non-overlapping positions, sampled uniformly on the visible surfaces, plus a JSON sidecar of object poses/boxes.

``as_splats``: any labelled point cloud as flat, normal-aligned Gaussians (3DGS parameterisation, SH DC colour).

All units are metres. Everything is deterministic per seed.
"""

from scene_kd.scene.synthetic.labels import (  # noqa: F401
    BANANA,
    BOTTLE,
    BOWL,
    BOX,
    BUILDING,
    CAR,
    DEFAULT_URBAN_ORIGIN,
    GRASS,
    MUG,
    MUG_HANDLE,
    POLE,
    ROAD,
    SCANNER_AIRBORNE,
    SCANNER_MOBILE,
    SIDEWALK,
    TABLE,
    TABLETOP_CLASSES,
    TREE,
    URBAN_CLASSES,
    URBAN_THINGS,
)
from scene_kd.scene.synthetic.splats import as_splats  # noqa: F401
from scene_kd.scene.synthetic.tabletop import make_tabletop  # noqa: F401
from scene_kd.scene.synthetic.urban import make_urban  # noqa: F401
