"""Throughput of AGPNet on one batch: encoder only, inference, training step and its parts.

    python benchmarks/throughput.py --device cuda --batch-size 8 --iters 20 --repeat 5

Goals: inference images/s >= 0.85 x encoder-only images/s; training step time <= 1.15 x the
sum of its parts measured alone (encoder on the perturbed image, two decoder forward+backward
passes, the EMA decoder forward that gives A_learn). The clean features come from the feature
cache in training, so the step itself runs the encoder once. Encoder weights are random
(speed does not depend on them). bf16 autocast on CUDA, fp32 on CPU. The last line printed
is one JSON object with the numbers.
"""

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from agpnet.model import AGPNetConfig, build_model


def seconds_per_call(fns: dict, device: torch.device, rounds: int, repeat: int, warmup: int) -> dict:
    """Median seconds per call of each function. The functions take turns round by round, so a
    change of machine load during the run hits them alike (shared machines)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) / repeat)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="vit_small_patch16_224.dino")
    parser.add_argument("--backbone-kwargs", type=json.loads, default={}, help="JSON for timm.create_model")
    parser.add_argument("--blocks", default="3,6,9,12", help="tapped encoder blocks, e.g. 1,2 for a 2-block ViT")
    parser.add_argument("--decoder-depth", type=int, default=4)
    parser.add_argument("--decoder-heads", type=int, default=6)
    parser.add_argument("--compile", nargs="?", const="default", choices=("default", "reduce-overhead"),
                        help="torch.compile the encoder and the decoders, in this mode (default: default)")
    parser.add_argument("--iters", type=int, default=10, help="rounds; each times every function once")
    parser.add_argument("--repeat", type=int, default=1, help="calls per function per round")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cfg = AGPNetConfig(backbone=args.backbone, backbone_kwargs=args.backbone_kwargs, image_size=args.image_size,
                       blocks=tuple(int(b) for b in args.blocks.split(",")), decoder_depth=args.decoder_depth,
                       decoder_heads=args.decoder_heads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights on purpose
        model, _ = build_model(cfg, "random", device)
    if args.compile:
        model.compile_in_place(args.compile)
    b = args.batch_size
    images = torch.randn(b, 3, args.image_size, args.image_size, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def encoder_only():
        with torch.no_grad(), amp:
            model.encoder(images)

    def inference():
        with torch.no_grad(), amp:
            model.predict(images)

    with amp:  # copied: with CUDA graphs (reduce-overhead) the next replay reuses the output memory
        clean = tuple(t.clone() for t in model.encode_clean(images))
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=1e-4)
    model.train()

    def train_step():
        with amp:
            loss = model.training_loss(images, 0.5, clean=clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 5.0)
        optimizer.step()
        model.update_ema(1000)  # past the warm-up

    perturbed = images + 0.2 * torch.randn_like(images)
    f_clean = clean[0]

    def part_encoder():
        with amp:
            model.encode_clean(perturbed, with_attention=False)

    def part_decoder():
        model.decoder.zero_grad(set_to_none=True)
        with amp:
            loss = F.mse_loss(model.decoder(f_clean).float(), f_clean)
        loss.backward()

    def part_ema():
        with amp:
            model.learned_attention(f_clean)

    t = seconds_per_call({"encoder": encoder_only, "infer": inference, "train": train_step,
                          "part_encoder": part_encoder, "part_decoder": part_decoder, "part_ema": part_ema},
                         device, args.iters, args.repeat, args.warmup)
    t_encoder, t_infer, t_train = t["encoder"], t["infer"], t["train"]
    t_parts = {"encoder (perturbed image)": t["part_encoder"], "decoder fwd+bwd x2": 2 * t["part_decoder"],
               "EMA decoder fwd (A_learn)": t["part_ema"]}
    result = {
        "encoder_img_s": b / t_encoder,
        "infer_img_s": b / t_infer,
        "infer_ratio": t_encoder / t_infer,
        "train_img_s": b / t_train,
        "train_step_over_parts": t_train / sum(t_parts.values()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
    }
    print(f"{args.backbone} at {args.image_size} px, decoder depth {args.decoder_depth}, batch {b}, "
          f"{args.iters} rounds (medians){f', compiled ({args.compile})' if args.compile else ''}, device {result['device']}")
    print(f"encoder only : {result['encoder_img_s']:9.1f} img/s  ({1000 * t_encoder:.1f} ms/batch)")
    print(f"inference    : {result['infer_img_s']:9.1f} img/s  ({1000 * t_infer:.1f} ms/batch), "
          f"{result['infer_ratio']:.3f} x encoder only (goal >= 0.85)")
    print(f"training     : {result['train_img_s']:9.1f} img/s  ({1000 * t_train:.1f} ms/step)")
    for name, t in t_parts.items():
        print(f"  part {name:26s} {1000 * t:8.1f} ms")
    print(f"  step / sum of parts: {result['train_step_over_parts']:.3f} (goal <= 1.15)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
