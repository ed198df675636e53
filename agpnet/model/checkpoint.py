"""Checkpoints: the training state of an AGPNet run, saved atomically and read back strictly.

`checkpoint.pt` (format CHECKPOINT_FORMAT) holds the model and training configs, the encoder's
weights source and SHA-256 fingerprint (a random encoder's weights themselves), both decoders, the
optimiser, the epoch, the losses, the identity of the training data and the training segments.
`load_checkpoint` rebuilds the model for inference; a missing, damaged, foreign or mismatched file
raises one AgpnetError naming it.
"""

import dataclasses
from pathlib import Path

import timm
import torch

import agpnet
from agpnet.atomic import atomic_write
from agpnet.config import AGPNetConfig, TrainConfig
from agpnet.errors import AgpnetError
from agpnet.model.agpnet import AGPNet, assemble
from agpnet.model.backbone import create_backbone, random_backbone

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "agpnet-checkpoint-2"
CHECKPOINT_KEYS = ("model_config", "train_config", "weights", "weights_info", "encoder_sha256", "encoder",
                   "decoder", "decoder_ema", "optimizer", "epoch", "loss_per_epoch", "data", "segments")


def save_checkpoint(path: Path, model: AGPNet, optimizer, cfg: TrainConfig, epoch: int, losses: list[float],
                    fingerprint: str, data: dict | None, segments: list[dict]) -> Path:
    """Atomically write the training state after `epoch` completed epochs (plain types only)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.cfg.to_dict(),
        "train_config": dataclasses.asdict(cfg),
        "weights": model.weights,
        "weights_info": dict(model.weights_info),
        "encoder_sha256": fingerprint,
        # Random (not pretrained) encoder weights travel with the checkpoint.
        "encoder": None if model.weights_info["pretrained"] else model.encoder.vit.state_dict(),
        "decoder": model.decoder.state_dict(),
        "decoder_ema": model.decoder_ema.state_dict() if model.decoder_ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "loss_per_epoch": list(losses),
        "data": data,
        "segments": [dict(s) for s in segments],
        "versions": {"agpnet": agpnet.__version__, "torch": str(torch.__version__),
                     "timm": str(timm.__version__)},
    }
    return atomic_write(path, lambda tmp: _torch_save(state, tmp))


def _torch_save(obj, path: Path) -> None:
    """torch.save, but a failed write (a full disk) raises its OSError: torch itself reports it
    as a RuntimeError such as "unexpected pos 704 vs 598"."""
    with open(path, "wb") as file:
        writer = _KeepWriteError(file)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None


class _KeepWriteError:
    """A binary file for torch.save whose `write` remembers the OSError it raised."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint's contents, with every key present and valid stored configs; a file that
    is missing, unreadable, of another format or damaged raises one AgpnetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise AgpnetError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise AgpnetError(f"{path}: not a readable agpnet checkpoint ({reason})") from None
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, str) and found.startswith("agpnet-checkpoint-") and found != CHECKPOINT_FORMAT:
        raise AgpnetError(f"{path}: checkpoint format {found!r} is not the one "
                          f"this agpnet {agpnet.__version__} reads ({CHECKPOINT_FORMAT!r}); "
                          "use the agpnet version that wrote it")
    if found != CHECKPOINT_FORMAT:
        raise AgpnetError(f"{path}: not an agpnet checkpoint (expected format {CHECKPOINT_FORMAT})")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise AgpnetError(f"{path}: damaged checkpoint, it lacks {', '.join(missing)}")
    builders = (("model_config", AGPNetConfig.from_dict), ("train_config", lambda d: TrainConfig(**d)))
    for key, build in builders:
        try:
            build(state[key])
        except (AgpnetError, TypeError, ValueError) as err:
            raise AgpnetError(
                f"{path}: its {key.replace('_', ' ')} is not valid for this agpnet ({err})") from None
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[AGPNet, dict]:
    """(model in eval mode on `device`, meta) from a checkpoint; meta holds everything but the weights:
    model_config, train_config, weights, weights_info, encoder_sha256, epoch, loss_per_epoch, data, segments,
    versions."""
    path = Path(path)
    state = read_checkpoint(path, "cpu")
    cfg = AGPNetConfig.from_dict(state["model_config"])
    try:
        if state["encoder"] is not None:
            vit = random_backbone(cfg)
        else:
            vit, _ = create_backbone(cfg, state["weights"])
        model = assemble(cfg, vit)
    except AgpnetError as err:
        raise AgpnetError(f"{path}: cannot rebuild its model ({err})") from None
    if state["encoder"] is not None:
        load_weights(model.encoder.vit, state["encoder"], path, "encoder")
    if model.encoder.fingerprint() != state["encoder_sha256"]:
        raise AgpnetError(f"{path}: the encoder weights from {state['weights_info']['source']} differ from "
                          "those the checkpoint was trained with")
    load_weights(model.decoder, state["decoder"], path, "decoder")
    if model.decoder_ema is not None:
        load_weights(model.decoder_ema, state["decoder_ema"], path, "decoder_ema")
    model.weights, model.weights_info = state["weights"], state["weights_info"]
    meta = {k: v for k, v in state.items() if k not in ("encoder", "decoder", "decoder_ema", "optimizer")}
    return model.to(device).eval(), meta


def load_weights(module: torch.nn.Module, weights, path: Path, key: str) -> None:
    """Load the checkpoint's `key` into `module` strictly; weights that do not fit the module
    built from the stored config raise one AgpnetError naming the file and the first differences."""
    if not isinstance(weights, dict):
        raise AgpnetError(f"{path}: its {key} is {type(weights).__name__}, expected the weights of the {key}")
    own = module.state_dict()
    missing = [name for name in own if name not in weights]
    unexpected = [name for name in weights if name not in own]
    reshaped = [f"{name} {_shape(weights[name])} for {tuple(tensor.shape)}" for name, tensor in own.items()
                if name in weights and _shape(weights[name]) != tuple(tensor.shape)]
    differences = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                   for what, names in (("missing", missing), ("unexpected", unexpected),
                                       ("of another shape", reshaped)) if names]
    if differences:
        raise AgpnetError(f"{path}: its {key} weights do not fit the model of its stored config: "
                          f"{'; '.join(differences)}")
    module.load_state_dict(weights)


def _shape(value) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
