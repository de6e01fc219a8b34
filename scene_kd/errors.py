"""The one error type users see. The CLI prints its message on one line and exits with status 2."""

from __future__ import annotations

from pathlib import Path


class SceneKDError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class SceneFormatError(SceneKDError):
    """A scene file is unreadable, truncated, empty or of an unknown type."""


class MissingWeightsError(SceneKDError):
    """Pretrained weights were needed and none could be found or downloaded."""


class RunStateError(SceneKDError):
    """A run folder lacks a stage's input, or its stages do not agree (dims, text encoder, ...)."""


class ConfigError(SceneKDError):
    """A config (YAML preset, run config or flag) has an unknown key, a value of the wrong type or a conflict."""


class InputContractError(SceneKDError):
    """A tile lacks an input a trained student needs (an attribute, the units it was trained in)."""


class UnknownConceptError(SceneKDError):
    """A label or query the field's text encoder cannot express (the oracle's fixed class vectors): refused, since
    it could never be the best match. A grasp lookup reports it as "no confident target" instead."""


class BudgetError(SceneKDError):
    """A plan refused before any work: more views, or more expected teacher time, than the budget allows.
    ``plan`` holds the plan's counts (views, megapixels, levels) where known."""

    def __init__(self, message: str, *, plan: dict | None = None, path: str | Path | None = None):
        self.plan = plan
        super().__init__(message, path=path)
