"""Encoder weights: strict hub weights, the demo's fallback, strict files, weights folders (no network)."""

import json
import logging
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

import agpnet.model.backbone as backbone
from agpnet.cli import main
from agpnet.errors import AgpnetError
from agpnet.model import AGPNetConfig, build_model


def tiny_cfg(fields: dict, **overrides) -> AGPNetConfig:
    return AGPNetConfig(**{**fields, **overrides})


def random_model(fields: dict, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(tiny_cfg(fields, **overrides), "random")[0]


def offline_timm(monkeypatch):
    """timm.create_model that fails every pretrained download."""
    create = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no route to the hub")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(backbone, "hub_unavailable_reason", lambda name: None)  # the quick check passes


def test_hub_weights_are_pretrained_or_the_run_stops(tiny_model_fields, monkeypatch):
    offline_timm(monkeypatch)
    with pytest.raises(AgpnetError) as err:
        build_model(tiny_cfg(tiny_model_fields), "hub")
    message = str(err.value)
    assert "\n" not in message and "vit_tiny_patch16_224" in message and "no route to the hub" in message
    assert "--weights PATH" in message and "agpnet weights download vit_tiny_patch16_224" in message


def test_auto_weights_fall_back_to_random_loudly(tiny_model_fields, monkeypatch, caplog):
    offline_timm(monkeypatch)
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="could not be downloaded"):
        model, info = build_model(tiny_cfg(tiny_model_fields), "auto")
    assert info["pretrained"] is False
    assert info["source"] == "random (hub download failed: no route to the hub)"
    assert "RANDOM" in info["warning"] and model.weights_info == info and model.weights == "random"
    assert "!!!!" in caplog.text and "no route to the hub" in caplog.text
    # The fallback encoder is the reproducible random one.
    assert model.encoder.fingerprint() == random_model(tiny_model_fields).encoder.fingerprint()


def test_unreachable_hub_does_not_try_the_download(tiny_model_fields, monkeypatch):
    create = timm.create_model

    def no_download(name, pretrained=False, **kwargs):
        assert not pretrained, "the download must not be attempted when the hub is known to be unreachable"
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    monkeypatch.setattr(backbone, "hub_unavailable_reason", lambda name: "huggingface.co is not reachable")
    with pytest.warns(UserWarning, match="could not be downloaded"):
        _, info = build_model(tiny_cfg(tiny_model_fields), "auto")
    assert info["source"] == "random (hub download failed: huggingface.co is not reachable)"
    with pytest.raises(AgpnetError, match="huggingface.co is not reachable"):
        build_model(tiny_cfg(tiny_model_fields), "hub")


def test_hub_weights_load_with_the_pretrained_head_so_timm_is_strict(tiny_model_fields, monkeypatch):
    """timm loads non-strictly when num_classes differs from the pretrained config's (1000 for this
    backbone): the encoder is built with the pretrained head, then the head is removed."""
    create, seen = timm.create_model, {}

    def fake_hub(name, pretrained=False, **kwargs):
        seen.update(kwargs, pretrained=pretrained)
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_hub)
    monkeypatch.setattr(backbone, "hub_unavailable_reason", lambda name: None)
    model, info = build_model(tiny_cfg(tiny_model_fields), "hub")
    assert seen["pretrained"] and seen["num_classes"] == 1000
    assert info == {"source": "hub:vit_tiny_patch16_224", "pretrained": True, "warning": None}
    assert model.weights == "hub" and not any(k.startswith("head.") for k in model.encoder.vit.state_dict())


def test_weights_file_loads_exactly(tiny_model_fields, tmp_path):
    source = random_model(tiny_model_fields, init_seed=5)
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.vit.state_dict(), path)
    model, info = build_model(tiny_cfg(tiny_model_fields), path)
    assert info["source"] == f"file:{path.resolve()}" and info["pretrained"] is True
    assert info["unwrapped"] is None and len(info["sha256"]) == 64
    assert model.encoder.fingerprint() == source.encoder.fingerprint() and model.weights == str(path.resolve())


@pytest.mark.parametrize("wrap", ["module.", "teacher.backbone."])
def test_wrapped_weights_are_unwrapped_only_when_they_then_match(tiny_model_fields, tmp_path, wrap):
    source = random_model(tiny_model_fields, init_seed=5)
    state = {f"{wrap}{k}": v for k, v in source.encoder.vit.state_dict().items()}
    if wrap == "teacher.backbone.":  # a DINO training checkpoint: nested, with the DINO head beside the backbone
        state = {"teacher": {k[len("teacher."):]: v for k, v in state.items()}, "epoch": 100}
        state["teacher"]["head.mlp.0.weight"] = torch.zeros(4, 32)
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    model, info = build_model(tiny_cfg(tiny_model_fields), path)
    assert info["unwrapped"] == wrap
    assert model.encoder.fingerprint() == source.encoder.fingerprint()


def test_weights_of_another_backbone_are_refused(tiny_model_fields, tmp_path):
    """Before: timm loaded with strict=False, left a random encoder and recorded pretrained=True."""
    other = random_model(tiny_model_fields, backbone_kwargs={**tiny_model_fields["backbone_kwargs"], "depth": 3},
                         blocks=(1, 2))
    path = tmp_path / "deeper.safetensors"
    save_file(other.encoder.vit.state_dict(), str(path))
    with pytest.raises(AgpnetError) as err:
        build_model(tiny_cfg(tiny_model_fields), path)
    message = str(err.value)
    assert message.startswith(f"{path}: not the weights of vit_tiny_patch16_224: 0 of its tensors missing, ")
    assert "unexpected (+blocks.2." in message and "\n" not in message
    wider = random_model(tiny_model_fields, backbone_kwargs={**tiny_model_fields["backbone_kwargs"], "embed_dim": 64})
    torch.save(wider.encoder.vit.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(AgpnetError, match="wider.pth: not the weights of vit_tiny_patch16_224: size mismatch"):
        build_model(tiny_cfg(tiny_model_fields), tmp_path / "wider.pth")
    with pytest.raises(AgpnetError, match="missing.pth: weights file not found"):
        build_model(tiny_cfg(tiny_model_fields), tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(AgpnetError, match="bad.pth: not loadable"):
        build_model(tiny_cfg(tiny_model_fields), tmp_path / "bad.pth")


def fake_download(monkeypatch, fields):
    """`agpnet weights download` without a network: timm's pretrained weights are a seeded tiny model
    at timm's default input size, with the pretrained config's 1000-class head."""
    kwargs = {**fields["backbone_kwargs"], "img_size": 224, "num_classes": 1000}

    def pretrained_state_dict(name):
        torch.manual_seed(7)
        return timm.create_model(name, pretrained=False, **kwargs).state_dict()

    monkeypatch.setattr(backbone, "pretrained_state_dict", pretrained_state_dict)


def test_weights_folder_round_trip_with_cli(tiny_model_fields, tmp_path, monkeypatch, capsys):
    fake_download(monkeypatch, tiny_model_fields)
    folder = tmp_path / "weights"
    assert main(["weights", "download", "vit_tiny_patch16_224", "--to", str(folder)]) == 0
    manifest = json.loads((folder / "vit_tiny_patch16_224.json").read_text())
    assert manifest["file"] == "vit_tiny_patch16_224.safetensors" and manifest["size"] > 0
    assert main(["weights", "list", str(folder)]) == 0
    assert "vit_tiny_patch16_224" in capsys.readouterr().out

    # The folder gives the backbone its file (position embedding resampled to 64 px, head dropped).
    model, info = build_model(tiny_cfg(tiny_model_fields), folder)
    assert info["pretrained"] and info["sha256"] == manifest["sha256"]
    assert info["source"] == f"file:{(folder / manifest['file']).resolve()}" and model.weights == str(folder.resolve())
    expected = backbone.pretrained_state_dict("vit_tiny_patch16_224")["blocks.1.mlp.fc2.weight"]
    torch.testing.assert_close(model.encoder.vit.state_dict()["blocks.1.mlp.fc2.weight"], expected)

    with pytest.raises(AgpnetError, match="no weights for vit_small_patch16_224.dino in .*holds vit_tiny_patch16_224"):
        build_model(tiny_cfg(tiny_model_fields, backbone="vit_small_patch16_224.dino"), folder)
    data = (folder / manifest["file"]).read_bytes()
    (folder / manifest["file"]).write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(AgpnetError, match="does not match .* recorded in"):
        build_model(tiny_cfg(tiny_model_fields), folder)
    assert main(["weights", "list", str(folder)]) == 1  # a damaged file fails the command
    assert "DAMAGED" in capsys.readouterr().out


def test_weights_download_without_network_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(backbone, "hub_unavailable_reason", lambda name: "huggingface.co is not reachable")
    assert main(["weights", "download", "vit_small_patch16_224.dino", "--to", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "huggingface.co is not reachable" in err
    assert main(["weights", "download", "not_a_model", "--to", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


def test_hub_check_follows_the_configured_endpoint_and_offline_mode(monkeypatch):
    """A mirror named by HF_ENDPOINT is what is probed (here a closed port on the loopback), and
    HF_HUB_OFFLINE is answered without a probe."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    reason = backbone.hub_unavailable_reason("vit_small_patch16_224.dino", timeout_s=2.0)
    assert reason.startswith("127.0.0.1 is not reachable") and "not in the local cache" in reason
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert backbone.hub_unavailable_reason("vit_small_patch16_224.dino").startswith("HF_HUB_OFFLINE is set")
