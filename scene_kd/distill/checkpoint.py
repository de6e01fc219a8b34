"""Student training checkpoints: ``RUN/student.ckpt.pt`` after every epoch, a flat ``dict[str, Tensor]`` written
with ``torch.save`` and read with ``weights_only=True`` (no pickled objects)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scene_kd.errors import RunStateError
from scene_kd.runio import atomic_path


def encode_json(obj: Any) -> Tensor:
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def decode_json(t: Tensor) -> Any:
    return json.loads(bytes(t.tolist()).decode())


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, *, epoch: int, step: int,
                    generator: torch.Generator, history: dict[str, list[float]], identity: dict[str, Any],
                    best: dict[str, Tensor] | None = None) -> None:
    """Flat dict of tensors: model.*, opt.<param>.<name>, epoch, step, rng, history.*, identity (JSON bytes),
    and best.* (the weights of the best held-out epoch, for early stopping) when given."""
    data: dict[str, Tensor] = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for name, v in state.items():
            data[f"opt.{i}.{name}"] = torch.as_tensor(v).detach().cpu().clone()
    data["epoch"] = torch.tensor(epoch)
    data["step"] = torch.tensor(step)
    data["rng"] = generator.get_state()
    for k, v in history.items():
        data[f"history.{k}"] = torch.tensor(v, dtype=torch.float64)
    data["identity"] = encode_json(identity)
    for k, v in (best or {}).items():
        data[f"best.{k}"] = v.detach().cpu().clone()
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: Path) -> dict[str, Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, unpickling refusal, ...
        raise RunStateError(f"corrupted student checkpoint ({type(e).__name__}); delete it or rerun with --force", path=path) from None
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()) or "epoch" not in data:
        raise RunStateError("not a student checkpoint; delete it or rerun with --force", path=path)
    return data


def restore(data: dict[str, Tensor], model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator,
             path: Path) -> tuple[int, int, dict[str, list[float]]]:
    try:
        model.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("model.")})
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in data.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        generator.set_state(data["rng"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise RunStateError(f"student checkpoint does not fit this network ({e}); rerun with --force", path=path) from None
    history = {k[8:]: v.tolist() for k, v in data.items() if k.startswith("history.")}
    return int(data["epoch"]), int(data["step"]), history


def best_weights(data: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The best.* weights a checkpoint holds (None when it has none)."""
    best = {k[5:]: v for k, v in data.items() if k.startswith("best.")}
    return best or None
