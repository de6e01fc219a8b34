"""CLI verbs, one module each (see scene_kd/cli.py). Keep heavy imports inside ``main``."""
