"""Can timm's hub weights be had right now? A quick answer, so that a machine without
internet falls back at once instead of after a minute of download retries."""

import socket

import timm

HUB_HOST = ("huggingface.co", 443)


def hub_unavailable_reason(name: str, timeout_s: float = 5.0) -> str | None:
    """None when `name`'s pretrained weights are in the local cache or the hub answers;
    else one line saying why they cannot be downloaded."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None  # weights from another URL: let timm try
    repo = cfg.hf_hub_id.split("@")[0]
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, filename), str):
                return None
    except ImportError:
        pass
    try:
        socket.create_connection(HUB_HOST, timeout=timeout_s).close()
    except OSError as err:
        return f"{HUB_HOST[0]} is not reachable ({err}) and {repo} is not in the local cache"
    return None
