"""Training config tree: one YAML per data set, validated strictly (unknown keys fail with their path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from edge_agent.config_base import StrictModel, load_yaml_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """Folder holding the data sets: $LINEWATCH_DATASETS, else ../shared/datasets beside the repo."""
    env = os.environ.get("LINEWATCH_DATASETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


class DatasetConfig(StrictModel):
    """Where the images are and how they are split."""

    name: str = Field(description="Short name used in reports, e.g. bottle")
    layout: Literal["mvtec", "folder"] = Field(description="mvtec: train/good, test/<type>, ground_truth")
    root: str = Field(description="Data set folder; relative paths are under the datasets root")
    normal_dirs: list[str] = Field(default_factory=list, description="folder layout: normal image folders")
    defect_dirs: list[str] = Field(default_factory=list, description="folder layout: one folder per type")
    mask_dir: str | None = Field(default=None, description="folder layout: <mask_dir>/<type>/<stem>_mask.png")
    val_fraction: float = Field(default=0.15, ge=0.0, lt=0.5, description="normal train images held out")
    test_fraction: float = Field(default=0.3, ge=0.0, lt=0.9, description="folder layout: normals to test")
    max_test_defects: int | None = Field(default=None, ge=1, description="cap on defective test images")
    seed: int = Field(default=0, description="seed of every split and subsample")

    def resolved_root(self) -> Path:
        """Absolute data set folder."""
        root = Path(self.root)
        return root if root.is_absolute() else datasets_root() / root


class AugmentConfig(StrictModel):
    """Training augmentation; a flip is wrong for some parts, so every item is per data set."""

    hflip: bool = Field(default=False, description="random horizontal flip")
    vflip: bool = Field(default=False, description="random vertical flip")
    rotate_deg: float = Field(default=0.0, ge=0.0, le=180.0, description="max absolute rotation")
    zoom: float = Field(default=0.0, ge=0.0, le=0.5, description="max relative zoom in or out")
    brightness: float = Field(default=0.0, ge=0.0, le=0.5, description="max brightness shift (x255)")
    contrast: float = Field(default=0.0, ge=0.0, le=0.5, description="max relative contrast change")


class ThresholdConfig(StrictModel):
    """How the image threshold is fitted on scores of normal images held out from training."""

    method: Literal["false_alarm_rate", "mean_std", "quantile"] = Field(
        default="false_alarm_rate", description="fitting rule; false_alarm_rate: an order statistic of normal scores"
    )
    false_alarm_rate: float = Field(
        default=0.01, gt=0.0, lt=0.5, description="share of good parts the line accepts to stop (false alarms)"
    )
    k: float = Field(default=3.0, gt=0.0, description="mean_std: threshold = mean + k * std")
    quantile: float = Field(default=0.99, gt=0.5, lt=1.0, description="quantile rule: this quantile")
    pixel_quantile: float = Field(default=0.999, gt=0.5, lt=1.0, description="pixel threshold quantile")


class AutoencoderConfig(StrictModel):
    """Convolutional autoencoder (MSE + SSIM loss) baseline."""

    enabled: bool = True
    size: int = Field(default=128, ge=32, le=512, description="input side in pixels")
    color: Literal["rgb", "gray"] = "rgb"
    resize: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    base_filters: int = Field(default=32, ge=8, le=128, description="filters of the first conv layer")
    latent_channels: int = Field(default=64, ge=4, le=512, description="channels at the bottleneck")
    epochs: int = Field(default=60, ge=1, description="max epochs (EarlyStopping may stop sooner)")
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    ssim_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="loss = (1-w) MSE + w (1-SSIM)")
    patience: int = Field(default=8, ge=1, description="EarlyStopping patience (epochs)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class PatchCoreConfig(StrictModel):
    """Feature scorer: memory bank of normal patch features on a pretrained backbone."""

    enabled: bool = True
    backbone: str = Field(default="efficientnet_lite0", description="registry name of the backbone")
    weights: str | None = Field(default="imagenet", description="imagenet, a local file, or null")
    size: int = Field(default=224, ge=64, le=640, description="input side in pixels")
    resize: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    taps: list[str] = Field(default_factory=lambda: ["stride8", "stride16"], description="feature taps")
    coreset_ratio: float = Field(default=0.01, gt=0.0, le=1.0, description="fraction of patches kept")
    max_bank: int = Field(default=4000, ge=100, description="upper bound on memory-bank size")
    projection_dim: int | None = Field(default=None, ge=8, description="random projection for coreset")
    blur_sigma: float = Field(default=4.0, ge=0.0, description="Gaussian blur of the map (input pixels)")
    pool: Literal[1, 3, 5] = Field(
        default=3, description="neighbourhood averaging of the feature maps, pool x pool patches (1: none)"
    )
    bank_rotations: list[Literal[90, 180, 270]] = Field(
        default_factory=list, description="also fill the bank from the training images turned by these degrees"
    )
    score_top_fraction: float | None = Field(
        default=None, gt=0.0, le=0.5, description="image score: mean of this top fraction of the map (null: max)"
    )
    whiten: bool = Field(
        default=False, description="search the bank in whitened feature space (fitted on the training patches)"
    )


class ClassifierConfig(StrictModel):
    """Defect-type classifier (normal + one class per defect type)."""

    enabled: bool = True
    size: int = Field(default=224, ge=32, le=512, description="input side in pixels")
    epochs: int = Field(default=40, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0.0, description="transfer learning rate")
    custom_learning_rate: float = Field(default=1e-3, gt=0.0, description="custom CNN learning rate")
    folds: int = Field(default=5, ge=2, description="stratified K-fold for evaluation")
    patience: int = Field(default=8, ge=1)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class TrainConfig(StrictModel):
    """Everything needed to train and evaluate the models of one data set."""

    dataset: DatasetConfig
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    patchcore: PatchCoreConfig = Field(default_factory=PatchCoreConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    output_dir: str = Field(default="runs", description="model folders are written under here")
    heatmap_samples: int = Field(default=8, ge=0, description="test images rendered as heatmaps")


def load_train_config(path: str | Path) -> TrainConfig:
    """Load and validate a training YAML; raise ConfigError naming the key path on failure."""
    return load_yaml_config(TrainConfig, path)
