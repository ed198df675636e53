"""The frozen backbone: a timm ViT, and where its weights come from.

The `weights` setting of a run:
- "hub": timm's pretrained weights (downloaded, or from the local Hugging Face cache). When they
  cannot be had, the run stops with one line (exit 2): a reproduction never trains on a random encoder.
- "auto": "hub", falling back to random weights with a loud warning (the offline demo only; the
  run record and the report say so).
- "random": random weights seeded with cfg.init_seed (tests, timing).
- a weights FILE (.safetensors, .pth/.pt/.bin, or timm's .npz): loaded strictly. Every tensor of
  the backbone must be in the file and every tensor of the file must belong to the backbone
  (after timm's own key conversion and position-embedding resampling; the classifier head, which
  AGPNet does not use, is dropped). A checkpoint wrapped under `module.`, `model.`, `backbone.`,
  `teacher.backbone.`, ... is unwrapped only when the unwrapped keys then match exactly.
- a FOLDER written by `agpnet weights download`: the file listed for cfg.backbone in its
  `<backbone>.json`, checked against the sha256 recorded there.

`weights_info` = {"source": str, "pretrained": bool, "warning": str | None} (+ "sha256" and
"unwrapped" for files) goes into checkpoints and run records.
"""

import hashlib
import importlib
import json
import logging
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from agpnet.atomic import atomic_write, write_json
from agpnet.config import AGPNetConfig
from agpnet.environment import timestamp
from agpnet.errors import AgpnetError

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "teacher.backbone.", "teacher.", "student.backbone.",
                    "state_dict.", "model.module.", "module.backbone.", "encoder.")
RANDOM_WARNING = ("the encoder has RANDOM weights, not the pretrained {backbone}: anomaly-detection numbers "
                  "from this model are not AGPNet results (use them only for tests and timing)")


def create_backbone(cfg: AGPNetConfig, weights: str | Path = "hub") -> tuple[nn.Module, dict]:
    """The timm ViT for cfg with its weights from `weights` (see the module docstring), and its
    weights_info."""
    name = cfg.backbone
    if not timm.is_model(name):
        raise AgpnetError(f"model config backbone={name!r}: not a timm model name")
    weights = str(weights)
    if weights == "random":
        warning = RANDOM_WARNING.format(backbone=name)
        warnings.warn(warning, stacklevel=3)
        return random_backbone(cfg), {"source": "random (requested)", "pretrained": False, "warning": warning}
    if weights in ("hub", "auto"):
        try:
            return hub_backbone(cfg), {"source": f"hub:{name}", "pretrained": True, "warning": None}
        except _HubUnavailable as err:
            if weights == "hub":
                raise AgpnetError(
                    f"weights 'hub': the pretrained {name} could not be loaded ({err}); "
                    "pass --weights PATH to a local weights file or to a folder from "
                    f"`agpnet weights download {name} --to DIR` (run that on a machine with internet), "
                    "or --weights auto to train on random weights for a demo") from None
            warning = (f"pretrained weights of {name} could not be downloaded ({err}); "
                       + RANDOM_WARNING.format(backbone=name))
            _announce(warning)
            return random_backbone(cfg), {"source": f"random (hub download failed: {err})",
                                          "pretrained": False, "warning": warning}
    path = Path(weights)
    if path.is_dir():
        path, sha256 = weights_file_in(path, name)
    elif path.is_file():
        sha256 = file_sha256(path)
    else:
        raise AgpnetError(f"{path}: weights file not found; expected 'hub', 'auto', 'random', "
                          f"a timm weights file for {name} or a folder from `agpnet weights download`")
    vit, unwrapped = file_backbone(cfg, path)
    info = {"source": f"file:{path.resolve()}", "pretrained": True, "warning": None, "sha256": sha256,
            "unwrapped": unwrapped}
    return vit, info


def timm_kwargs(cfg: AGPNetConfig) -> dict:
    """timm.create_model arguments: input size, no classifier head, then cfg.backbone_kwargs."""
    return {"img_size": cfg.image_size, "num_classes": 0, **cfg.backbone_kwargs}


def random_backbone(cfg: AGPNetConfig) -> nn.Module:
    """Randomly initialised timm ViT, reproducible: seeded with cfg.initial_seed() (global RNG untouched)."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.initial_seed())
            vit = timm.create_model(cfg.backbone, pretrained=False, **timm_kwargs(cfg))
    except (TypeError, ValueError, AssertionError) as err:
        raise AgpnetError(f"model config backbone_kwargs={cfg.backbone_kwargs}: rejected by timm "
                          f"for {cfg.backbone} ({' '.join(str(err).split())})") from None
    _check_patch_size(vit, cfg)
    return vit


class _HubUnavailable(Exception):
    """timm's pretrained weights cannot be had (offline, not cached, download failed)."""


def hub_backbone(cfg: AGPNetConfig) -> nn.Module:
    """The ViT with timm's pretrained weights, loaded strictly: it is built with the pretrained head
    (so timm loads with strict=True) and the head is removed afterwards. Raises _HubUnavailable."""
    name = cfg.backbone
    unavailable = hub_unavailable_reason(name)  # offline: fail now, not after a minute of retries
    if unavailable:
        raise _HubUnavailable(unavailable)
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    kwargs = timm_kwargs(cfg)
    if pretrained_cfg is not None and pretrained_cfg.num_classes and "num_classes" not in cfg.backbone_kwargs:
        kwargs["num_classes"] = pretrained_cfg.num_classes
    try:
        vit = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # network, hub, cache or file failure
        raise _HubUnavailable(" ".join(str(err).split())[:300] or type(err).__name__) from None
    vit.reset_classifier(0)
    _check_patch_size(vit, cfg)
    return vit


def hub_unavailable_reason(name: str, timeout_s: float = 5.0) -> str | None:
    """None when `name`'s pretrained weights are in the local cache or the hub answers;
    else one line saying why they cannot be downloaded."""
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        return None  # weights from another URL: let timm try
    repo = pretrained_cfg.hf_hub_id.split("@")[0]
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return None
    if constants.HF_HUB_OFFLINE:
        return f"HF_HUB_OFFLINE is set and {repo} is not in the local cache"
    endpoint = urlparse(constants.ENDPOINT)  # huggingface.co, or the mirror HF_ENDPOINT names
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        return f"{endpoint.hostname} is not reachable ({err}) and {repo} is not in the local cache"
    return None


# -- weights files -------------------------------------------------------------------------
def file_backbone(cfg: AGPNetConfig, path: Path) -> tuple[nn.Module, str | None]:
    """The ViT with the weights of `path`, loaded strictly; returns (vit, unwrapped prefix or None)."""
    vit = random_backbone(cfg)
    if path.suffix == ".npz":  # big_vision / augreg checkpoints: timm's own loader, which reads every tensor
        try:
            vit.load_pretrained(str(path))
        except Exception as err:
            raise AgpnetError(
                f"{path}: not loadable as weights of {cfg.backbone} ({_one_line(err)})") from None
        return vit, None
    state, prefix = _match_keys(_flatten(read_state_dict(path)), vit, path, cfg.backbone)
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as err:  # a shape does not fit
        mismatches = (line.strip() for line in str(err).splitlines() if "size mismatch" in line)
        first = next(mismatches, _one_line(err))
        raise AgpnetError(f"{path}: not the weights of {cfg.backbone}: {first[:300]}") from None
    return vit, prefix or None


def _match_keys(state: dict, vit: nn.Module, path: Path, backbone: str) -> tuple[dict, str]:
    """The tensors of `state` converted to `vit`'s keys, exactly (no key missing, none extra), and the
    wrapper prefix that was removed ("" for none)."""
    expected = set(vit.state_dict())
    mismatches = []
    for prefix in ("", *WRAPPER_PREFIXES):
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not candidate:
            continue
        try:
            candidate = _timm_filter(vit)(candidate, vit)
        except Exception:  # timm's conversion does not apply to these keys: not this wrapper
            continue
        candidate = {k: v for k, v in candidate.items() if k in expected or not _is_classifier(k, vit)}
        missing, unexpected = sorted(expected - set(candidate)), sorted(set(candidate) - expected)
        if not missing and not unexpected:
            return candidate, prefix
        mismatches.append((len(missing) + len(unexpected), missing, unexpected))
    if not mismatches:
        raise AgpnetError(f"{path}: holds no tensors; expected the weights of {backbone}")
    _, missing, unexpected = min(mismatches, key=lambda m: m[0])
    shown = ", ".join([*(f"-{k}" for k in missing[:3]), *(f"+{k}" for k in unexpected[:3])])
    raise AgpnetError(f"{path}: not the weights of {backbone}: {len(missing)} of its tensors missing, "
                      f"{len(unexpected)} unexpected ({shown}); "
                      "expected a checkpoint of exactly this backbone")


def read_state_dict(path: Path) -> dict:
    """Tensors of a .safetensors or torch-saved file (nested dicts kept)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise AgpnetError(f"{path}: not loadable as a weights file ({_one_line(err)})") from None
    if not isinstance(state, dict):
        raise AgpnetError(
            f"{path}: not loadable as a weights file (expected a state dict, got {type(state).__name__})")
    return state


def _flatten(state: dict, prefix: str = "") -> dict:
    """{"teacher": {"backbone.x": t}} -> {"teacher.backbone.x": t}; non-tensor entries are dropped."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


def _timm_filter(vit: nn.Module):
    """timm's checkpoint conversion for this model family (key renames, position-embedding resampling)."""
    module = importlib.import_module(type(vit).__module__)
    return getattr(module, "checkpoint_filter_fn", lambda state, model: state)


def _is_classifier(key: str, vit: nn.Module) -> bool:
    heads = (getattr(vit, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return any(key.startswith(f"{head}.") for head in heads)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- a folder of weights for offline machines ----------------------------------------------
def manifest_name(backbone: str) -> str:
    return f"{backbone}.json"


def download_weights(backbones: list[str], folder: str | Path) -> list[dict]:
    """Save timm's pretrained weights of each backbone as `<folder>/<backbone>.safetensors` with a
    manifest `<backbone>.json` {backbone, source, file, sha256, size, timm, saved}. Needs the hub."""
    from safetensors.torch import save_file

    folder = Path(folder)
    for name in backbones:
        if not timm.is_model(name):
            raise AgpnetError(f"{name}: not a timm model name")
    manifests = []
    for name in backbones:
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        source = (pretrained_cfg.hf_hub_id or pretrained_cfg.url) if pretrained_cfg is not None else None
        state = pretrained_state_dict(name)
        file = folder / f"{name}.safetensors"
        tensors = {k: v.contiguous() for k, v in state.items()}
        atomic_write(file, lambda tmp, tensors=tensors: save_file(tensors, str(tmp)))
        manifest = {"backbone": name, "source": source, "file": file.name, "sha256": file_sha256(file),
                    "size": file.stat().st_size, "timm": timm.__version__, "saved": timestamp()}
        write_json(folder / manifest_name(name), manifest)
        manifests.append(manifest)
    return manifests


def pretrained_state_dict(name: str) -> dict:
    """timm's pretrained weights of `name` as it loads them (its default input size, with its head)."""
    unavailable = hub_unavailable_reason(name)
    if unavailable:
        raise AgpnetError(f"{name}: pretrained weights cannot be downloaded here ({unavailable}); run "
                          "`agpnet weights download` on a machine with internet")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except (OSError, RuntimeError, ValueError) as err:
        raise AgpnetError(f"{name}: pretrained weights could not be downloaded ({_one_line(err)})") from None


def list_weights(folder: str | Path) -> list[dict]:
    """The manifests of a weights folder, each with "ok" (file present with the recorded sha256)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AgpnetError(
            f"{folder}: no such weights folder (expected one written by `agpnet weights download`)")
    found = []
    for path in sorted(folder.glob("*.json")):
        manifest = _read_manifest(path)
        file = folder / manifest["file"]
        manifest["ok"] = file.is_file() and file_sha256(file) == manifest["sha256"]
        found.append(manifest)
    return found


def weights_file_in(folder: Path, backbone: str) -> tuple[Path, str]:
    """(file, sha256) for `backbone` in a weights folder; the file must match its recorded sha256."""
    path = folder / manifest_name(backbone)
    if not path.is_file():
        held = ", ".join(p.stem for p in sorted(folder.glob("*.json"))) or "nothing"
        raise AgpnetError(f"{path}: no weights for {backbone} in {folder} (it holds {held}); run "
                          f"`agpnet weights download {backbone} --to {folder}` on a machine with internet")
    manifest = _read_manifest(path)
    file = folder / manifest["file"]
    if not file.is_file():
        raise AgpnetError(f"{file}: weights file listed in {path} is missing")
    sha256 = file_sha256(file)
    if sha256 != manifest["sha256"]:
        raise AgpnetError(f"{file}: sha256 {sha256[:12]}... does not match {manifest['sha256'][:12]}... "
                          f"recorded in {path}; the file is damaged or was replaced: download it again")
    return file, sha256


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AgpnetError(f"{path}: not a readable weights manifest ({_one_line(err)})") from None
    fields = ("backbone", "file", "sha256")
    if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), str) for k in fields):
        raise AgpnetError(f"{path}: not a weights manifest (expected backbone, file and sha256 fields)")
    if Path(manifest["file"]).name != manifest["file"]:
        raise AgpnetError(f"{path}: file {manifest['file']!r} must be a plain file name in the same folder")
    return manifest


def _check_patch_size(vit: nn.Module, cfg: AGPNetConfig) -> None:
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", (1, 1))
    if cfg.image_size % patch[0] or cfg.image_size % patch[1]:
        raise AgpnetError(
            f"model config image_size={cfg.image_size}: must be a multiple of the patch size {patch}")


def _announce(warning: str) -> None:
    """A warning nobody can miss: a banner in the log and a Python warning."""
    bar = "!" * 78
    log.warning("\n%s\n!! WARNING: %s\n!! The run continues; its record says weights.pretrained = false.\n%s",
                bar, warning, bar)
    warnings.warn(warning, stacklevel=4)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__
