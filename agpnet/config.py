"""Run configuration: plain dataclasses that serialise to the run record.

A run is `RunConfig(data, model, train, eval)` plus the weights source, device and output
folder. Every field has a unique name across the sub-configs, so a flat mapping (a YAML
file, CLI flags, papermill parameters, a sweep cell) is enough to set any of them:
`RunConfig.from_flat({"dataset": "mvtec", "epochs": 10, "noise": "none"})`.
"""

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agpnet.errors import AgpnetError
from agpnet.model import AGPNetConfig
from agpnet.train import TrainConfig
from agpnet.yamlfile import read_yaml_mapping


@dataclass
class DataConfig:
    """Which images: dataset kind, root folder and setting (see agpnet.data.load_split)."""

    dataset: str = "mvtec"
    root: str = "data/synth"
    setting: str = "multi-class"
    category: str | None = None  # one-class: required; multi-class: optional comma-separated subset
    shots: int | None = None  # few-shot: k normal training images per category


@dataclass
class EvalConfig:
    """How the final model is evaluated (metrics.md)."""

    eval_batch_size: int = 16
    fpr_limit: float = 0.3  # AUPRO integration limit
    eval_resolution: str = "input"  # "input": maps and masks at S x S; "original": at each image's own size
    save_maps: bool = False  # write maps.npz (anomaly maps + attention masks) for the viewer
    maps_size: int = 128  # side length of the maps stored in maps.npz (px)


    def __post_init__(self):
        if self.eval_resolution not in ("input", "original"):
            raise AgpnetError(f"eval config eval_resolution={self.eval_resolution!r}: expected input or original")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: AGPNetConfig = field(default_factory=AGPNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    weights: str = "hub"  # "hub", "random" or a path to a local weights file
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    out_dir: str = "runs/run"

    def to_dict(self) -> dict:
        """Nested plain dict (tuples as lists), as stored in the run record."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_flat(self) -> dict:
        flat = {}
        for name, value in self.to_dict().items():
            flat.update(value if isinstance(value, dict) and name in SECTIONS else {name: value})
        return flat

    @classmethod
    def from_flat(cls, values: dict, base: "RunConfig | None" = None) -> "RunConfig":
        """A RunConfig from flat `{field: value}` (any section), on top of `base` or the defaults."""
        flat = (base or cls()).to_flat()
        known = flat_fields()
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in known:
                raise AgpnetError(f"unknown config field {key!r}; expected one of: {', '.join(sorted(known))}")
            flat[key] = _coerce(key, value, known[key])
        sections = {
            name: section_cls(**{f.name: flat[f.name] for f in dataclasses.fields(section_cls)})
            for name, section_cls in SECTIONS.items()
        }
        top = {f.name: flat[f.name] for f in dataclasses.fields(cls) if f.name not in SECTIONS}
        return cls(**sections, **top)

    @classmethod
    def from_dict(cls, nested: dict) -> "RunConfig":
        """Inverse of `to_dict` (e.g. the `config` of a run record)."""
        flat = {}
        for name, value in nested.items():
            flat.update(value if name in SECTIONS else {name: value})
        return cls.from_flat(flat)


SECTIONS = {"data": DataConfig, "model": AGPNetConfig, "train": TrainConfig, "eval": EvalConfig}


def flat_fields() -> dict[str, object]:
    """Every settable field name -> its type annotation."""
    fields = {}
    for section_cls in SECTIONS.values():
        hints = typing.get_type_hints(section_cls)
        fields.update({f.name: hints[f.name] for f in dataclasses.fields(section_cls)})
    hints = typing.get_type_hints(RunConfig)
    fields.update({f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS})
    duplicated = len(fields) != sum(len(dataclasses.fields(c)) for c in SECTIONS.values()) + 3
    assert not duplicated, "config field names must be unique across sections"
    return fields


def load_yaml_config(path: str | Path) -> dict:
    """Flat fields from a YAML file (a mapping of field -> value)."""
    return read_yaml_mapping(path, "config file", "a mapping of config fields to values")


def _coerce(key: str, value, annotation):
    """Convert a value from YAML/CLI/papermill to the field's type; strings are parsed as YAML."""
    base, optional = _unwrap_optional(annotation)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if value is None:
        raise AgpnetError(f"config field {key!r} cannot be empty; expected {_type_name(base)}")
    origin = typing.get_origin(base)
    if isinstance(value, str) and origin in (tuple, list) and not value.lstrip().startswith("["):
        value = value.split(",")  # "3,6,9,12"
    elif isinstance(value, str) and base is not str:
        value = yaml.safe_load(value)
    try:
        if base is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
        if origin in (tuple, list):
            if isinstance(value, int):
                value = [value]
            (item,) = {a for a in typing.get_args(base) if a is not Ellipsis}
            return origin(item(v) for v in value)
        if origin is dict or base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        raise AgpnetError(f"config field {key!r}: got {value!r}; expected {_type_name(base)}") from None
    return value


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation))
