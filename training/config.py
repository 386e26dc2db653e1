"""Training configuration: dataclasses, YAML presets in `training/configs/`, command-line overrides.

A run's resolved configuration is written to `RUN/config.yaml` and stored in every checkpoint, so
a checkpoint always says exactly how it was made, and `--resume` continues with the same settings.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clibd_cli.errors import ClibdError

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
STAGES = ("contrastive", "dna-pretrain")


@dataclass
class DataConfig:
    """Where specimens come from and which splits play which role (CLIBD HDF5 group names)."""

    path: str | None = None
    kind: str = "auto"
    image: dict = field(default_factory=lambda: {"size": 224, "resize": 256, "crop": "center"})
    train_splits: list[str] = field(default_factory=lambda: ["train_seen"])
    val_seen_splits: list[str] = field(default_factory=lambda: ["val_seen"])
    val_unseen_splits: list[str] = field(default_factory=lambda: ["val_unseen"])
    key_splits: list[str] = field(default_factory=lambda: ["seen_keys", "val_unseen_keys"])
    num_workers: int = 0


@dataclass
class OptimConfig:
    """AdamW with the paper's one-cycle schedule (initial_lr → lr → final_lr, cosine)."""

    lr: float = 5e-5
    initial_lr: float = 1e-6
    final_lr: float = 1e-6
    weight_decay: float = 0.0
    pct_start: float = 0.3
    betas: tuple[float, float] = (0.9, 0.999)
    scale_lr_with_batch: bool = True  # max lr × global batch / 500, as the official code


@dataclass
class TrainConfig:
    """Everything a run needs; `model` is a :class:`clibd_training.models.ModelConfig` as a dict."""

    name: str = "custom"
    stage: str = "contrastive"
    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 1
    batch_size: int = 32  # per process
    grad_accum: int = 1
    positives: str = "sample"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    checkpoint_every: int = 1000  # optimizer steps
    log_every: int = 10
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    mlm_probability: float = 0.5  # dna-pretrain stage

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        raw = copy.deepcopy(raw)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ClibdError(f"unknown training config keys: {', '.join(sorted(unknown))}.")
        data = _sub(DataConfig, raw.pop("data", {}), "data")
        optim = _sub(OptimConfig, raw.pop("optim", {}), "optim")
        if "betas" in (raw_optim := asdict(optim)):
            optim.betas = tuple(raw_optim["betas"])
        config = cls(**raw, data=data, optim=optim)
        if config.stage not in STAGES:
            raise ClibdError(f"stage {config.stage!r}: use one of {', '.join(STAGES)}.")
        if config.positives not in ("sample", "species", "bin"):
            raise ClibdError(f"positives {config.positives!r}: use sample, species or bin.")
        return config


def _sub(kind, raw: dict, name: str):
    known = {f.name for f in fields(kind)}
    unknown = set(raw or {}) - known
    if unknown:
        raise ClibdError(f"unknown keys in '{name}': {', '.join(sorted(unknown))}.")
    return kind(**(raw or {}))


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """A preset name (`tiny-cpu`) or a YAML file, with `key.sub=value` overrides (YAML values)."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ClibdError(f"{name_or_path}: no such config file or preset; presets: {', '.join(presets())}.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClibdError(f"{path}: not valid YAML ({exc}).") from exc
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClibdError(f"override {item!r}: use key.sub=value, e.g. optim.lr=1e-4.")
        _set(raw, key.split("."), yaml.safe_load(value))
    return TrainConfig.from_dict(raw)


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def save_config(config: TrainConfig, path: Path) -> None:
    import yaml

    data = config.to_dict()
    data["optim"]["betas"] = list(data["optim"]["betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
