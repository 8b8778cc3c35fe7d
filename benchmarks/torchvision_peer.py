"""Peer reference: torchvision's SSD300-VGG16 training step, images/second.

    python benchmarks/torchvision_peer.py [--device cpu|cuda] [--batch-size 8] [--steps 5]
        [--warmup 1] [--json]

Runs in its own virtual environment with torch and torchvision (``make
bench-peers``), not in the library's. Times forward + backward + SGD step of
``torchvision.models.detection.ssd300_vgg16`` (random weights, 21 classes =
20 + background, the size of the library's SSD300 VOC model) on random 300x300
images with 1-10 random boxes each, in float32 and in bfloat16 autocast, and
prints the median images/second. Compare with ``benchmarks/train_step.py
--models ssd300`` on the same machine; ``benchmarks/gpu_check.py`` runs it with
``--device cuda --json`` (one JSON line per precision).
"""

import argparse
import json
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import ssd300_vgg16


def random_batch(batch_size, image_size, num_classes, generator, device):
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    targets = []
    for _ in range(batch_size):
        n = int(torch.randint(1, 11, (1,), generator=generator))
        lo = torch.rand(n, 2, generator=generator) * 0.7
        side = 0.02 + torch.rand(n, 2, generator=generator) * 0.28
        boxes = torch.cat([lo, lo + side], dim=1) * image_size  # absolute xyxy
        labels = torch.randint(1, num_classes, (n,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return list(images.to(device)), targets


def images_per_second(model, optimizer, batch, steps, warmup, autocast_dtype, device):
    images, targets = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            losses = model(images, targets)
            loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        if device == "cuda":  # kernels run asynchronously: wait before reading the clock
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return len(images) / statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=21, help="with background")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="also one JSON line per precision")
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=args.num_classes)
    model.to(args.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batch = random_batch(args.batch_size, 300, args.num_classes, generator, args.device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"torch={torch.__version__} torchvision={torchvision.__version__} "
        f"threads={torch.get_num_threads()} device={args.device} batch={args.batch_size} "
        f"steps={args.steps}"
    )
    for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        speed = images_per_second(
            model, optimizer, batch, args.steps, args.warmup, dtype, args.device
        )
        name = label if dtype is None else f"{label} autocast"
        print(f"torchvision ssd300_vgg16 ({params:.2f}M) {name:<18} {speed:7.2f} img/s")
        if args.json:
            print(json.dumps({"precision": label, "batch": args.batch_size,
                              "images_per_second": speed}))


if __name__ == "__main__":
    main()
