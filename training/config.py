"""Training configuration: dataclasses, YAML presets in `training/configs/`, command-line overrides.

A run's resolved configuration is written to `RUN/config.yaml` and stored in every checkpoint, so
a checkpoint always says exactly how it was made, and `--resume` continues with the same settings.

Every value is checked against its field's type when the config is read (:func:`check_value`): a
wrong one used to be accepted here and fail later inside a torchrun worker as a traceback
(`--set epochs=ten`), or silently (`precision: fp16` ran in fp32).  Now it is one line naming the
key, the value and what it must be, and where it came from (the YAML file or the `--set` override).
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

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
    # Clip the global gradient norm to this before each step (off by default: runs stay as before); the
    # pre-clip norm is then logged as grad_norm, which shows a diverging run before its loss does.
    clip_grad_norm: float | None = None


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
    # torch.compile each transformer block (models.compile_blocks); off by default, and refused with
    # grad_accum > 1, whose recompute must redraw the same dropout masks as the cached pass.
    compile: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """Build from nested dicts (YAML, checkpoints); unknown keys and ill-typed values are one-line errors."""
        raw = check_section(cls, copy.deepcopy(raw), "")
        data = DataConfig(**(raw.pop("data", None) or {}))
        optim = OptimConfig(**(raw.pop("optim", None) or {}))
        optim.betas = tuple(optim.betas)
        config = cls(**raw, data=data, optim=optim)
        if config.compile and config.grad_accum > 1:
            raise ClibdError("compile and grad_accum > 1 do not go together yet: accumulation recomputes each "
                             "micro-batch with the dropout masks of its cached pass, which compiled blocks draw "
                             "differently. Set compile=false, or grad_accum=1 with a larger batch_size.")
        if config.model:
            from clibd_training.models import ModelConfig

            ModelConfig.from_dict(config.model)  # its own checks (sizes, modalities) here, not in a worker
        return config


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """A preset name (`tiny-cpu`) or a YAML file, with `key.sub=value` overrides (YAML values).

    Each override is checked on its own first, so an error names the `--set` that caused it; what
    is left to go wrong afterwards is in the file, and its errors name the file.
    """
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
    if not isinstance(raw, dict):
        raise ClibdError(f"{path}: a training config is a mapping of keys to values, not {_show(raw)}.")
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ClibdError(f"override {item!r}: use key.sub=value, e.g. optim.lr=1e-4.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ClibdError(f"--set {item}: {text!r} is not a YAML value ({_first_line(exc)}).") from None
        try:
            hint = _hint_at(key)
            if not isinstance(value, str) and _fit(hint, text)[0] and not _fit(hint, value)[0]:
                value = text  # `name=2024`: YAML read a number where a string is wanted
            value = check_value(key, hint, value)
        except ClibdError as exc:
            raise ClibdError(f"--set {item}: {exc}") from None
        _set(raw, key.split("."), value)
    try:
        return TrainConfig.from_dict(raw)
    except ClibdError as exc:
        where = f"{path} with the --set overrides" if overrides else str(path)
        raise ClibdError(f"{where}: {exc}") from None


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(tree.get(key), dict):
            tree[key] = {}
        tree = tree[key]
    tree[keys[-1]] = value


def save_config(config: TrainConfig, path: Path) -> None:
    import yaml

    data = config.to_dict()
    data["optim"]["betas"] = list(data["optim"]["betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# ------------------------------------------------------------------------------------- checking values

CHOICES: dict[str, tuple[str, ...]] = {
    "stage": STAGES,
    "positives": ("sample", "species", "bin"),
    "precision": ("auto", "bf16", "fp32"),
}
AT_LEAST_ONE = ("epochs", "batch_size", "grad_accum", "checkpoint_every", "log_every", "max_steps")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_section(kind: type, raw: Any, where: str) -> dict[str, Any]:
    """``raw`` with every value checked against the dataclass ``kind``'s field types (recursively).

    The values come back as given, except numbers that YAML 1.1 reads as text (``1e-4``), which
    become floats where a float is expected.  The first unknown key or ill-typed value raises.
    """
    if not isinstance(raw, dict):
        what = where or "a training config"
        raise ClibdError(f"{what} must be a mapping of keys to values, not {_show(raw)}.")
    hints = _hints(kind)
    unknown = set(raw) - set(hints)
    if unknown:
        if not where:
            raise ClibdError(f"unknown training config keys: {', '.join(sorted(unknown))}.")
        raise ClibdError(f"unknown keys in '{where}': {', '.join(sorted(unknown))}.")
    return {key: check_value(f"{where}.{key}" if where else key, hints[key], value) for key, value in raw.items()}


def check_value(key: str, hint: Any, value: Any) -> Any:
    """``value`` if it fits the type ``hint`` (and, for top-level keys, their choices and range).

    Raises :class:`ClibdError` with the key, the value and the expected type, e.g. "epochs must be an
    integer, not 'ten' (text)."
    """
    if is_dataclass(hint):
        return None if value is None else check_section(hint, value, key)
    fits, value = _fit(hint, value)
    if not fits:
        raise ClibdError(f"{key} must be {_describe(hint)}, not {_show(value)}.")
    if key in CHOICES and value not in CHOICES[key]:
        raise ClibdError(f"{key} must be one of {', '.join(CHOICES[key])}, not {_show(value)}.")
    if key in AT_LEAST_ONE and value is not None and value < 1:
        raise ClibdError(f"{key} must be at least 1, not {_show(value)}.")
    if key == "optim.clip_grad_norm" and value is not None and not value > 0:
        raise ClibdError(f"{key} must be a positive number or null, not {_show(value)}.")
    if key == "mlm_probability" and not 0.0 <= value <= 1.0:
        raise ClibdError(f"{key} must be between 0 and 1, not {_show(value)}.")
    return value


def _hints(kind: type) -> dict[str, Any]:
    """Field types of a config dataclass; ``TrainConfig.model`` is checked as a models.ModelConfig."""
    resolved = get_type_hints(kind)
    hints = {f.name: resolved[f.name] for f in fields(kind)}
    if kind is TrainConfig:
        from clibd_training.models import ModelConfig  # heavy (timm, transformers): imported only to check

        hints["model"] = ModelConfig
    return hints


def _hint_at(dotted: str) -> Any:
    """The type expected at ``a.b.c`` (for an override); below a free-form dict anything goes."""
    kind: Any = TrainConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if not is_dataclass(kind):
            if kind is dict or get_origin(kind) is dict:
                return Any
            raise ClibdError(f"{where} is a single value, not a section with keys.")
        hints = _hints(kind)
        if part not in hints:
            if not where:
                raise ClibdError(f"unknown training config keys: {part}.")
            raise ClibdError(f"unknown keys in '{where}': {part}.")
        kind = hints[part]
    return kind


def _fit(hint: Any, value: Any) -> tuple[bool, Any]:
    """(does ``value`` fit ``hint``, the value to keep)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True, value
    if origin in (Union, UnionType):
        if value is None:
            return type(None) in args, value
        for arm in args:
            if arm is not type(None):
                fits, kept = _fit(arm, value)
                if fits:
                    return True, kept
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return True, float(value)  # YAML 1.1 reads 1e-4 (no dot) as text
        return isinstance(value, int | float) and not isinstance(value, bool), value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return False, value
            pairs = list(zip(args, value, strict=True))
        else:
            pairs = [(args[0], item) for item in value]
        checked = [_fit(arm, item) for arm, item in pairs]
        if not all(fits for fits, _ in checked):
            return False, value
        kept = [item for _, item in checked]
        return True, tuple(kept) if isinstance(value, tuple) else kept
    return False, value


def _describe(hint: Any) -> str:
    """``int | None`` → "an integer or null", ``list[str]`` → "a list of strings"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        arms = [_describe(arm) for arm in args if arm is not type(None)]
        return " or ".join(arms) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(args[0], "values")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} {plural}"
        return f"a list of {plural}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _show(value: Any) -> str:
    """The value as read, and what YAML made of it (``'ten' (text)``), cut to one short line."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    kinds = {bool: "true/false", int: "integer", float: "number", str: "text", list: "list", dict: "mapping",
             type(None): "null"}
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
