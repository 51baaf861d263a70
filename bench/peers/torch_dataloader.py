#!/usr/bin/env python3
"""The PyTorch peer: torch.utils.data.DataLoader + torchvision transforms on a millrace dataset.

Reads DATASET/labels.lst (im2rec format: index, label, relative path), decodes with PIL through
torchvision's default_loader and applies the standard ImageNet recipes:

  train  RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize(ImageNet mean/std)
  val    Resize(256) + CenterCrop(224) + ToTensor + Normalize(ImageNet mean/std)

Steady-state throughput: the first batch (worker start-up, first file reads) is not timed;
images/s = images delivered after the first batch / time from the first batch to the last.
Prints one line and, with --json, writes
{"peer": "pytorch-dataloader", "recipe", "images", "images_per_second", "workers", ...}.
"""

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402


def _reexec_with_system_python():
    """Debian's python3-torch and python3-torchvision live in the system interpreter; a pyenv or
    venv python3 earlier on PATH does not see them."""
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system) \
            and not os.environ.get("MILLRACE_NO_REEXEC"):
        os.environ["MILLRACE_NO_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)


try:
    import torch
    import torchvision
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from torchvision.datasets.folder import default_loader
except ImportError:
    _reexec_with_system_python()
    raise

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ListDataset(Dataset):
    def __init__(self, items, transform):
        self.items = items
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return self.transform(default_loader(path)), label


def recipe_transform(recipe):
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if recipe == "train":
        return transforms.Compose([transforms.RandomResizedCrop(224),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   normalize])
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                               transforms.ToTensor(), normalize])


def single_thread_worker(_worker_id):
    # Each worker is one process of the budget; intra-op threads would oversubscribe the cores.
    torch.set_num_threads(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset folder holding labels.lst")
    parser.add_argument("--recipe", choices=["train", "val"], default="train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=0,
                        help="use the first N images of the list (default: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", help="write the result here as JSON")
    args = parser.parse_args()
    if args.workers < 0 or args.batch < 1 or args.epochs < 1 or args.images < 0:
        parser.error("--workers must be >= 0, --batch and --epochs >= 1, --images >= 0")

    items = [(path, label) for path, _, label in peerlib.read_list(args.root, args.images)]
    if args.workers == 0:
        torch.set_num_threads(1)
    # Full batches only, as millrace's `batch: {last: drop}` delivers them.
    loader = DataLoader(ListDataset(items, recipe_transform(args.recipe)),
                        batch_size=args.batch, shuffle=args.recipe == "train",
                        num_workers=args.workers, drop_last=True,
                        worker_init_fn=single_thread_worker if args.workers > 0 else None,
                        persistent_workers=args.workers > 0)

    timer = peerlib.time_batches((b for _ in range(args.epochs) for b in loader),
                                 lambda batch: batch[0].shape[0])
    if timer.batches < 2:
        raise SystemExit(f"need at least 2 batches to time the steady state, got {timer.batches} "
                         f"({len(items)} images, batch {args.batch}, drop_last)")

    images, timed_images = timer.images, timer.timed_images
    seconds = timer.last - timer.first
    rate = timed_images / seconds
    result = {
        "peer": "pytorch-dataloader",
        "recipe": args.recipe,
        "images": images,
        "images_per_second": rate,
        "workers": args.workers,
        "batch": args.batch,
        "epochs": args.epochs,
        "timed_images": timed_images,
        "timed_seconds": seconds,
        "first_batch_seconds": timer.first - timer.start,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
    print(f"pytorch-dataloader {args.recipe}: {args.workers} workers, batch {args.batch}, "
          f"{images} images, {rate:.1f} images/s (steady state over {timed_images} images in "
          f"{seconds:.2f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
