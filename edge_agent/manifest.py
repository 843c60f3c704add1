"""The bundle contract: ``manifest.json`` as typed models, validated when export writes it and when the agent reads it.

There are no defaults at the reader: every parameter the agent needs is written by the export, and a missing or
mistyped one is an error naming the key path (``models.scorer.params.pool``). Parameters are typed per model
kind (:data:`PARAMS_BY_KIND`). Figures (``metrics``) and the training description stay open mappings: the agent
does not read them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from edge_agent.config_base import StrictModel, format_validation_error
from edge_agent.errors import BundleError
from edge_agent.preprocess import PreprocessSpec
from edge_agent.scoring import Calibration

#: Bundle formats: 1 and 2 untyped (2 added ``shares_graph_of``); 3 is this typed contract.
FORMAT_VERSION = 3

Kind = Literal["patchcore", "autoencoder", "classifier", "type_head"]
Precision = Literal["int8", "float16", "float32"]


def _every_field(value: Any, cls: type) -> Any:
    """Refuse a mapping that leaves out a field of the dataclass ``cls`` (the dataclass defaults do not apply)."""
    if isinstance(value, dict):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in value]
        if missing:
            msg = f"missing {', '.join(missing)}"
            raise ValueError(msg)
    return value


class TensorSpec(StrictModel):
    """One graph input or output as the exporter saw it."""

    name: str
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


class PatchCoreParams(StrictModel):
    """What the float32 PatchCore maths needs beside the graph."""

    memory_bank: str = Field(description="file of the float32 memory bank")
    bank_size: int = Field(ge=1)
    pool: int = Field(ge=1, description="neighbourhood averaging of the feature maps")
    blur_sigma: float = Field(ge=0.0, description="Gaussian smoothing of the map (input pixels)")
    score_top_fraction: float | None = Field(gt=0.0, le=0.5, description="image score: top-fraction mean; null: max")
    patch_taps: int = Field(ge=1, description="feature maps (finest first) that form the patches")
    type_tail: str | None = Field(
        default=None,
        description="graph from the last patch tap to a type head's deeper tap, run only when a type is asked for",
    )
    whitening: str | None = Field(
        default=None, description="float32 (D, D) matrix taking patches into the bank's whitened space; null: none"
    )
    type_reads_last_tap: bool = Field(
        default=False, description="a type head pools the last patch tap as its deeper map (no tail, no deeper output)"
    )
    search_probe: int = Field(
        default=2,
        ge=1,
        description="cells the first pass of the clustered search probes (large banks): the bundle's thresholds were "
        "fitted with it; bundles written before it was recorded used 2",
    )

    def side_files(self) -> list[str]:
        """The files beside the graph this scorer reads."""
        return [f for f in (self.memory_bank, self.type_tail, self.whitening) if f is not None]


class AutoencoderParams(StrictModel):
    """What the float32 reconstruction-error maths needs."""

    ssim_weight: float = Field(ge=0.0, le=1.0)
    blur_sigma: float = Field(ge=0.0)


class ClassifierParams(StrictModel):
    """A softmax classifier needs nothing beside its graph output."""


class TypeHeadParams(StrictModel):
    """The type head's regression file (``edge_agent.type_head``)."""

    head: str


ModelParams = PatchCoreParams | AutoencoderParams | ClassifierParams | TypeHeadParams
PARAMS_BY_KIND: dict[str, type[StrictModel]] = {
    "patchcore": PatchCoreParams,
    "autoencoder": AutoencoderParams,
    "classifier": ClassifierParams,
    "type_head": TypeHeadParams,
}


class ModelEntry(StrictModel):
    """One model of a bundle; ``role`` (scorer, classifier) is its key under ``models``."""

    role: str = Field(default="", exclude=True)
    kind: Kind
    file: str
    precision: Precision
    preprocess: PreprocessSpec
    input: TensorSpec
    outputs: list[TensorSpec] = Field(min_length=1)
    params: ModelParams
    calibration: Calibration | None = None
    class_names: list[str] = Field(default_factory=list)
    shares_graph_of: str | None = None
    source_model: str
    settings: dict[str, Any] | None = None
    search: dict[str, Any] | None = None

    @field_validator("preprocess", mode="before")
    @classmethod
    def _whole_preprocess(cls, value: Any) -> Any:
        return _every_field(value, PreprocessSpec)

    @model_validator(mode="before")
    @classmethod
    def _params_of_kind(cls, data: Any) -> Any:
        """Validate ``params`` against the model of ``kind`` (so errors name the right fields)."""
        if isinstance(data, dict) and data.get("kind") in PARAMS_BY_KIND and isinstance(data.get("params"), dict):
            try:
                data = {**data, "params": PARAMS_BY_KIND[data["kind"]].model_validate(data["params"])}
            except ValidationError as err:
                problems = [f"params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
                raise ValueError("; ".join(problems)) from None
        return data

    @model_validator(mode="after")
    def _complete(self) -> ModelEntry:
        if self.kind in ("classifier", "type_head") and not self.class_names:
            msg = f"a {self.kind} needs class_names"
            raise ValueError(msg)
        return self


class DataDescription(StrictModel):
    """The data the bundle's models were trained on."""

    name: str
    layout: str
    train_images: int
    validation_images: int
    test_images: int
    defect_types: list[str]
    skipped_files: int


class Manifest(StrictModel):
    """``manifest.json`` of a bundle."""

    format_version: Literal[3]
    name: str
    version: str
    created: str
    code_version: str
    precision: Precision
    data: DataDescription
    models: dict[str, ModelEntry]
    metrics: dict[str, dict[str, Any]]
    files: dict[str, str] = Field(description="SHA-256 of every file of the bundle")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if "scorer" not in self.models:
            msg = "no scorer model"
            raise ValueError(msg)
        for role, entry in self.models.items():
            if entry.kind in ("patchcore", "autoencoder") and entry.calibration is None:
                msg = f"models.{role}: a {entry.kind} scorer needs its calibration"
                raise ValueError(msg)
            side = entry.params.side_files() if isinstance(entry.params, PatchCoreParams) else []
            for file in (entry.file, *side):
                if file not in self.files:
                    msg = f"models.{role}: {file} is not covered by a hash"
                    raise ValueError(msg)
            if entry.shares_graph_of is not None:
                owner = self.models.get(entry.shares_graph_of)
                if owner is None or owner.file != entry.file:
                    msg = f"models.{role} shares the graph of {entry.shares_graph_of!r}, which is not in it"
                    raise ValueError(msg)
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Tell each entry its role."""
        for role, entry in self.models.items():
            object.__setattr__(entry, "role", role)


class PatchCoreRunCalibration(Calibration):
    """``calibration.json`` of a PatchCore run folder: the calibration and what export needs to rebuild it."""

    blur_sigma: float = Field(ge=0.0)
    pool: int = Field(ge=1)
    taps: list[str] = Field(min_length=1)
    score_top_fraction: float | None = Field(gt=0.0, le=0.5)
    bank: dict[str, Any] = Field(description="coreset parameters, so that export rebuilds the bank the same way")
    settings: dict[str, Any]
    search: dict[str, Any] | None


class AutoencoderRunCalibration(Calibration):
    """``calibration.json`` of an autoencoder run folder."""

    ssim_weight: float = Field(ge=0.0, le=1.0)
    blur_sigma: float = Field(ge=0.0)


class ClassifierRunCalibration(StrictModel):
    """``calibration.json`` of a classifier run folder."""

    class_names: list[str] = Field(min_length=2)


class TypeHeadRunCalibration(StrictModel):
    """``calibration.json`` of a type head run folder."""

    class_names: list[str] = Field(min_length=2)
    deep_tap: str
    head: str = Field(description="file of the regression")
    scorer: str = Field(description="the PatchCore run folder beside it whose graph it reads")


RUN_CALIBRATION_BY_KIND: dict[str, type[StrictModel]] = {
    "patchcore": PatchCoreRunCalibration,
    "autoencoder": AutoencoderRunCalibration,
    "classifier": ClassifierRunCalibration,
    "type_head": TypeHeadRunCalibration,
}


def run_calibration(kind: str, data: Any, source: str) -> dict[str, Any]:
    """A run folder's ``calibration.json`` validated for its model ``kind`` (ValueError naming each bad key)."""
    try:
        model = RUN_CALIBRATION_BY_KIND[kind].model_validate(data)
    except KeyError as err:
        raise ValueError(f"{source}: unknown model kind {kind!r}") from err
    except ValidationError as err:
        raise ValueError(format_validation_error(err, source).replace("invalid config", "invalid run file")) from err
    return model.model_dump()


def parse_manifest(data: Any, source: str) -> Manifest:
    """Validate a manifest mapping; raise BundleError naming ``source`` and each bad key path."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise BundleError(format_validation_error(err, source).replace("invalid config", "invalid manifest")) from err


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The mapping written to ``manifest.json`` (validated, so what the agent reads back)."""
    return manifest.model_dump(mode="json")
