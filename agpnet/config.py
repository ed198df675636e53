"""Run configuration: plain dataclasses that serialise to the run record.

A run is `RunConfig(data, model, train, eval)` plus the weights source, device and output
folder. Every field has a unique name across the sub-configs, so a flat mapping (a YAML
file, CLI flags, papermill parameters, a sweep cell) is enough to set any of them:
`RunConfig.from_flat({"dataset": "mvtec", "epochs": 10, "noise": "none"})`.
"""

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from agpnet.errors import AgpnetError
from agpnet.yamlfile import parse_yaml_value, read_yaml_mapping

CHOICES = {
    "noise": ("none", "uniform", "attention"),
    "noise_level": ("image", "feature", "both"),
    "attention": ("prior", "learn", "both"),
    "alpha_schedule": ("constant", "linear", "cosine", "step"),
    "mask_ratio_schedule": ("constant", "linear", "cosine", "step"),
    "feature_noise_scale": ("token_norm", "unit"),
    "image_branch_attention": ("clean", "perturbed"),
    "score": ("max", "pooled-max"),
}

# The allowed range of every numeric field, whatever the source (CLI, YAML, sweep, code): ">= a",
# "> a", or an interval "[a, b)" (brackets include the bound). The field's type says whether a whole
# number is needed; NaN, infinities and booleans are never numbers here; None passes where allowed.
SEED_RANGE = "[0, 4294967295]"
NUMBER_RULES = {
    # model
    "image_size": ">= 1", "init_seed": SEED_RANGE, "decoder_depth": ">= 1", "decoder_heads": ">= 1",
    "decoder_mlp_ratio": "> 0", "ema_decay": "[0, 1)", "alpha_max": ">= 0", "schedule_steps": ">= 2",
    "beta": ">= 0", "mask_ratio_max": "[0, 1]", "image_noise_std": ">= 0", "smoothing_sigma": ">= 0",
    "score_pool": ">= 1",
    # train
    "epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0", "weight_decay": ">= 0", "lr_decay_at": "[0, 1]",
    "lr_decay_gamma": "> 0", "grad_clip": ">= 0", "seed": SEED_RANGE, "checkpoint_every": ">= 0",
    "num_workers": ">= 0",
    # data
    "shots": ">= 1",
    # eval
    "eval_batch_size": ">= 1", "fpr_limit": "(0, 1]", "maps_size": ">= 1",
}


def meaning(kind: str = "recipe", resume: bool = False, ablation: bool = False) -> dict:
    """What a field means, as dataclass field metadata:
    kind "recipe": it changes the result and separates methods in tables (the default);
         "seed": it changes the result, but runs differing only in it are repeats of one method;
         "identity": which data the run is about (category, root), not how it is done;
         "runtime": it does not change the recipe (device, workers, compilation, output).
    resume: may differ when a run is resumed (training fields only).
    ablation: one of the method's ablation factors (docs/method.md)."""
    return {"kind": kind, "resume": resume, "ablation": ablation}


RUNTIME = meaning("runtime")


def field_names(kind: str | None = None, resume: bool | None = None,
                ablation: bool | None = None) -> tuple[str, ...]:
    """The flat field names (RunConfig order) whose meaning() matches every argument given."""
    given = {"kind": kind, "resume": resume, "ablation": ablation}
    wanted = {k: v for k, v in given.items() if v is not None}
    names = []
    for section in (*SECTIONS.values(), RunConfig):
        for f in dataclasses.fields(section):
            if f.name in SECTIONS:
                continue
            if all(f.metadata.get(k, meaning()[k]) == v for k, v in wanted.items()):
                names.append(f.name)
    return tuple(names)


@dataclass
class AGPNetConfig:
    """Every setting of the model and its perturbation branch. [paper]: arXiv 2408.07490;
    [default]: our choice where the paper is silent (docs/method.md, README)."""


    # Encoder: a frozen timm ViT.
    # [paper] DINO ViT-S/16
    backbone: str = field(default="vit_small_patch16_224.dino", metadata=meaning(ablation=True))
    backbone_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments
    image_size: int = 256  # [default] input side (px); 256 -> 16x16 tokens with patch 16
    # [default] tapped encoder blocks, 1-indexed
    blocks: tuple[int, ...] = field(default=(3, 6, 9, 12), metadata=meaning(ablation=True))
    # [default] seed of the decoder init (and of a random encoder); None: the run's seed (RunConfig
    # sets it, so repeats with other seeds also start from other weights; 0 for a model built alone)
    init_seed: int | None = field(default=None, metadata=meaning("seed"))

    # Decoder: a small ViT over the token grid, width = encoder width.
    decoder_depth: int = 4  # [default]
    decoder_heads: int = 6  # [default]
    decoder_mlp_ratio: float = 4.0  # [default]

    # Perturbation branch (training only).
    # [paper] none | uniform | attention (ablation 1)
    noise: str = field(default="attention", metadata=meaning(ablation=True))
    # [paper] image | feature | both (ablation 1)
    noise_level: str = field(default="both", metadata=meaning(ablation=True))
    # [paper] A_prior only | A_learn only | both (ablation 6)
    attention: str = field(default="both", metadata=meaning(ablation=True))
    # [paper] A_learn from an EMA copy of the decoder (ablation 4)
    ema_decoder: bool = field(default=True, metadata=meaning(ablation=True))
    ema_decay: float = 0.999  # [default] eta
    # [default] eta_t = min(eta, (1 + t) / (10 + t)) at optimiser step t (TF's num_updates)
    ema_warmup: bool = True
    alpha_max: float = 20.0  # [default] attention weight of the feature noise at the end of training
    # [paper] linear increase (ablation 5)
    alpha_schedule: str = field(default="linear", metadata=meaning(ablation=True))
    schedule_steps: int = 4  # [default] number of levels of the "step" schedules
    beta: float = 1.0  # [default] attention-independent part of the feature noise
    # [default] E ~ N(0,1) * ||f||_2 / C per token ("unit": no scaling)
    feature_noise_scale: str = "token_norm"
    mask_ratio_max: float = 0.5  # [default] image noise: fraction of pixels masked at the end of training
    mask_ratio_schedule: str = "linear"  # [paper] the mask ratio grows over training
    image_noise_std: float = 0.2  # [default] Gaussian noise std inside the mask (normalised pixel units)
    # [default] A_final of the clean image also weights the perturbed one's feature noise
    image_branch_attention: str = "clean"

    # Anomaly map and score.
    smoothing_sigma: float = 4.0  # [default] Gaussian smoothing of the map (px); 0 = off
    score: str = "max"  # [paper] max of the map; "pooled-max": max of the score_pool average-pooled map
    score_pool: int = 16  # [default] pooling window (px, stride 1) for score="pooled-max"

    def __post_init__(self):
        self.blocks = tuple(int(b) for b in self.blocks)
        self.backbone_kwargs = dict(self.backbone_kwargs)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise AgpnetError(f"model config {name}={getattr(self, name)!r}: "
                                  f"expected one of {', '.join(allowed)}")
        if "img_size" in self.backbone_kwargs:
            raise AgpnetError(f"model config backbone_kwargs={self.backbone_kwargs}: img_size is set by the "
                              "image_size field; remove it from backbone_kwargs")
        if not self.blocks or min(self.blocks) < 1 or len(set(self.blocks)) != len(self.blocks):
            raise AgpnetError(f"model config blocks={self.blocks}: expected distinct 1-indexed block numbers")
        check_numbers("model", self)

    def initial_seed(self) -> int:
        """The seed of the decoder init (and of a random encoder): init_seed, 0 when unset."""
        return 0 if self.init_seed is None else self.init_seed

    def to_dict(self) -> dict:
        """Plain dict (lists, no tuples) for checkpoints and run records."""
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AGPNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AgpnetError(f"model config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)


IMAGE_CACHES = ("auto", "device", "host", "off")


@dataclass
class TrainConfig:
    """Optimisation of the decoder (agpnet.train.fit)."""


    epochs: int = 500  # [paper v1] 500 epochs for MVTec-AD
    batch_size: int = 8
    lr: float = 1e-4  # at batch size 8; the lr used is lr * batch_size / 8
    weight_decay: float = 1e-4
    lr_decay_at: float = 0.8  # fraction of the epochs after which the lr is multiplied by lr_decay_gamma
    lr_decay_gamma: float = 0.1
    grad_clip: float = 5.0  # max gradient norm; 0 = off
    seed: int = field(default=0, metadata=meaning("seed"))
    # epochs between checkpoints; 0 = at the end only
    checkpoint_every: int = field(default=0, metadata=meaning("runtime", resume=True))
    # DataLoader workers; None = usable CPUs - 1 (4..16) on CUDA, 0 on CPU (agpnet.runtime)
    num_workers: int | None = field(default=None, metadata=meaning("runtime", resume=True))
    amp: str = "auto"  # "auto" (bf16 autocast on CUDA, off on CPU), "bf16" or "off"
    # torch.compile the encoder and the decoders for training; None (written auto): on CUDA when
    # the run is long enough to repay the compilation (agpnet.runtime.use_compile), else not
    compile: bool | None = field(default=None, metadata=meaning("runtime", resume=True))
    # torch.compile mode: "reduce-overhead" (CUDA graphs; measured fastest) or "default"
    compile_mode: str = field(default="reduce-overhead", metadata=meaning("runtime", resume=True))
    # compute clean features + A_prior once and reuse them
    cache_features: bool = field(default=True, metadata=RUNTIME)
    # decoded training images kept: auto (device on CUDA when they fit, else host), device, host,
    # off (decode in DataLoader workers every epoch); the result is the same
    image_cache: str = field(default="auto", metadata=meaning("runtime", resume=True))

    def __post_init__(self):
        if self.amp not in ("auto", "bf16", "off"):
            raise AgpnetError(f"train config amp={self.amp!r}: expected auto, bf16 or off")
        if self.image_cache not in IMAGE_CACHES:
            raise AgpnetError(f"train config image_cache={self.image_cache!r}: "
                              f"expected one of {', '.join(IMAGE_CACHES)}")
        if self.compile_mode not in ("default", "reduce-overhead"):
            raise AgpnetError(f"train config compile_mode={self.compile_mode!r}: "
                              "expected default or reduce-overhead")
        check_numbers("train", self)


REALIAD_RESOLUTIONS = ("256", "512", "1024", "raw")  # Real-IAD's image folders realiad_<resolution>


@dataclass
class DataConfig:
    """Which images: dataset kind, root folder and setting (see agpnet.data.load_split)."""

    dataset: str = "mvtec"
    root: str = field(default="data/synth", metadata=meaning("identity"))
    setting: str = "multi-class"
    # one-class: required; multi-class: optional comma-separated subset
    category: str | None = field(default=None, metadata=meaning("identity"))
    shots: int | None = None  # few-shot: k normal training images per category
    # decode JPEGs in Pillow's draft mode (reduced scale) before the resize:
    # faster, not the full decode published numbers use
    fast_jpeg: bool = False
    realiad_resolution: str = "1024"  # Real-IAD only: the image folder realiad_<this> (256, 512, 1024 or raw)
    # Real-IAD only: the split folder realiad_jsons/<this> (realiad_jsons: multi-view, all 5 views, as ADer;
    # realiad_jsons_sv, realiad_jsons_fuiad_0.x)
    realiad_split: str = "realiad_jsons"

    def __post_init__(self):
        if self.realiad_resolution not in REALIAD_RESOLUTIONS:
            raise AgpnetError(f"data config realiad_resolution={self.realiad_resolution!r}: expected one of "
                              f"{', '.join(REALIAD_RESOLUTIONS)}")
        if self.realiad_split in ("", ".", "..") or Path(self.realiad_split).name != self.realiad_split:
            raise AgpnetError(f"data config realiad_split={self.realiad_split!r}: expected a folder name in "
                              "<root>/realiad_jsons/, e.g. realiad_jsons or realiad_jsons_sv")
        check_numbers("data", self)

    def reader_options(self) -> dict:
        """The per-dataset reader options, for agpnet.data.load_split(options=...)."""
        return {"realiad_resolution": self.realiad_resolution, "realiad_split": self.realiad_split}


EVAL_RESOLUTIONS = ("input", "original")  # maps and masks at S x S, or at each image's own size


@dataclass
class EvalConfig:
    """How the final model is evaluated (metrics.md)."""

    eval_batch_size: int = field(default=16, metadata=RUNTIME)
    fpr_limit: float = 0.3  # AUPRO integration limit
    eval_resolution: str = "input"  # "input": maps and masks at S x S; "original": at each image's own size
    # write maps.npz (anomaly maps + attention masks) for the viewer
    save_maps: bool = field(default=False, metadata=RUNTIME)
    maps_size: int = field(default=128, metadata=RUNTIME)  # side length of the maps stored in maps.npz (px)
    # fp32: decoder in fp32, maps kept as float32 (4 B/px);
    # bf16: bf16 autocast on CUDA (as amp), maps kept as float16 (2 B/px)
    eval_precision: str = "fp32"


    def __post_init__(self):
        if self.eval_precision not in ("fp32", "bf16"):
            raise AgpnetError(f"eval config eval_precision={self.eval_precision!r}: expected fp32 or bf16")
        if self.eval_resolution not in EVAL_RESOLUTIONS:
            raise AgpnetError(f"eval config eval_resolution={self.eval_resolution!r}: "
                              "expected input or original")
        check_numbers("eval", self)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: AGPNetConfig = field(default_factory=AGPNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # "hub" (pretrained or stop), "auto" (hub, else random: demo), "random", a file or folder
    weights: str = "hub"
    # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    device: str = field(default="auto", metadata=RUNTIME)
    out_dir: str = field(default="runs/run", metadata=RUNTIME)

    def __post_init__(self):
        if self.model.init_seed is None:  # repeats with other seeds start from other decoder weights
            self.model.init_seed = self.train.seed

    def to_dict(self) -> dict:
        """Nested plain dict (tuples as lists), as stored in the run record."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_flat(self) -> dict:
        flat = {}
        for name, value in self.to_dict().items():
            flat.update(value if isinstance(value, dict) and name in SECTIONS else {name: value})
        return flat

    @classmethod
    def defaults(cls) -> dict:
        """Every flat field's default as declared (init_seed None: not yet the run's seed)."""
        flat = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in SECTIONS}
        for section_cls in SECTIONS.values():
            flat.update(dataclasses.asdict(section_cls()))
        return flat

    @classmethod
    def from_flat(cls, values: dict) -> "RunConfig":
        """A RunConfig from flat `{field: value}` (any section), the others at their defaults."""
        flat = cls.defaults()
        known = flat_fields()
        for key, value in values.items():
            key = key.replace("-", "_") if isinstance(key, str) else key  # a notebook's {2: 3}: unknown
            if key not in known:
                raise AgpnetError(f"unknown config field {key!r}; "
                                  f"expected one of: {', '.join(sorted(known))}")
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
    if optional and base is bool and isinstance(value, str):  # a switch whose None is its automatic choice
        if value.lower() == "auto":
            return None
        if value.lower() in ("none", "null"):  # not "off": say what is read
            raise AgpnetError(f"config field {key!r}: got {value!r}; expected true, false or auto")
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if value is None:
        raise AgpnetError(f"config field {key!r} cannot be empty; expected {_type_name(base)}")
    origin = typing.get_origin(base)
    if isinstance(value, str) and origin in (tuple, list) and not value.lstrip().startswith("["):
        value = value.split(",")  # "3,6,9,12"
    elif isinstance(value, str) and base is not str:
        value = parse_yaml_value(value, f"config field {key!r}")
    try:
        if origin in (tuple, list):
            (item,) = {a for a in typing.get_args(base) if a is not Ellipsis}
            return origin(_scalar(v, item) for v in (value if isinstance(value, list | tuple) else [value]))
        if origin is dict or base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if base in (bool, int, float, str):
            return _scalar(value, base)
    except (TypeError, ValueError):
        switch = "true, false or auto" if optional else "true or false"
        expected = switch if base is bool else _type_name(base)
        raise AgpnetError(f"config field {key!r}: got {value!r}; expected {expected}") from None
    return value


def _scalar(value, kind: type):
    """value as bool, int, float or str; raises ValueError for a non-bool as bool, a bool as a
    number or text (YAML's true is not 1), a fraction as an integer, and anything but text or a
    number as text (a YAML 256 is the name "256"; a list or mapping is no name)."""
    if (kind is bool) != isinstance(value, bool):
        raise ValueError
    if kind is str and not isinstance(value, str | numbers.Number):
        raise ValueError
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError
    return kind(value)


def check_numbers(section: str, config) -> None:
    """Every int/float field of a config section is a finite number of its type within NUMBER_RULES."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        base, optional = _unwrap_optional(hints[f.name])
        value = getattr(config, f.name)
        if base not in (int, float) or (optional and value is None):
            continue
        rule = NUMBER_RULES[f.name]
        kind = numbers.Integral if base is int else numbers.Real
        if not (isinstance(value, kind) and not isinstance(value, bool)
                and (isinstance(value, numbers.Integral) or math.isfinite(value)) and _within(value, rule)):
            expected = "an integer" if base is int else "a finite number"
            raise AgpnetError(f"{section} config {f.name}={value!r}: expected {expected} {_rule_text(rule)}")


def _within(value, rule: str) -> bool:
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(bound) for bound in rule[1:-1].split(","))
    above = low <= value if rule[0] == "[" else low < value
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def _rule_text(rule: str) -> str:
    return rule if rule.startswith(">") else f"in {rule}"


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (tuple, list):
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))
