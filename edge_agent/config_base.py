"""Base of every config model: strict (unknown keys fail), immutable, errors with YAML key paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Config section: unknown keys are errors, values are validated, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def repeated(values: list[str]) -> list[str]:
    """The values that occur more than once, sorted (for "must be unique" checks)."""
    return sorted({v for v in values if values.count(v) > 1})


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the YAML key path (``a.b.0.c``)."""
    lines = [f"invalid config {source}:"]
    for item in err.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


def parse_config(model: type[ModelT], data: Any, source: str = "<dict>") -> ModelT:
    """Validate a plain mapping into ``model``; raise ConfigError naming each bad key path."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from err


def load_yaml_config(model: type[ModelT], path: str | Path) -> ModelT:
    """Read a YAML file and validate it; raise ConfigError with the file and key path on failure."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    return parse_config(model, data, str(path))
