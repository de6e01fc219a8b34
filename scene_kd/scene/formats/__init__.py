"""One module per file format; importing registers the readers/writers with scene_kd.scene.io."""

import importlib

for _name in ("las", "ply", "npy", "splat", "pcd"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_name}":
            raise
