"""Small helpers shared by CLI verbs."""

from __future__ import annotations

import json
import sys
from typing import Any

from scene_kd.runio import to_jsonable


def emit(obj: Any, as_json: bool, human: str | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or ``human`` text (default: indented JSON)."""
    if as_json or human is None:
        print(json.dumps(to_jsonable(obj), indent=None if as_json else 2))
    else:
        print(human)
    sys.stdout.flush()
