#!/usr/bin/env python3
"""A PyTorch training loop fed by millrace, and the same loop fed by torchvision's DataLoader.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/train_loop.py \\
        --root data/imagenet-like --loader millrace --steps 20
    /usr/bin/python3 examples/python/train_loop.py --root data/imagenet-like --loader dataloader

Both loaders apply ImageNet's training recipe to the same files (random-resized crop to 224,
horizontal flip, a new shuffle each epoch) and hand the loop a float tensor normalised with
ImageNet's mean and std, (pixel / 255 - mean) / std. millrace (configs/train.yaml with a float32
`normalize`) writes that tensor in its one pass over the crop, and torch views it without a copy.
`--config configs/train_reduced.yaml` is the same recipe decoding only each crop's window, at a
reduced DCT scale where it still covers the output. `--dtype int8` takes the recipe's own int8 batches (pixel - mean, what an int8 network consumes
as it is) and divides by the std in the loop instead.

`--model resnet18` (any torchvision classifier) trains that network, with random weights, by SGD;
`--model none` only takes the batches, so that the figure printed is the loader's data rate. Each
run prints one line: loader, images, seconds, images/s (timed from the first batch on).

Distributed data parallel, one process per rank (torchrun sets RANK, WORLD_SIZE and the
rendezvous; gloo on CPU):

    PYTHONPATH=build/python /usr/bin/python3 -m torch.distributed.run --nproc-per-node 2 \
        examples/python/train_loop.py --root data/imagenet-like --steps 20

The model is wrapped in DistributedDataParallel, and millrace.torch.Loader takes its rank and
world size from torch.distributed: each epoch is one shuffle of the whole data set dealt to the
ranks, every rank with the same number of batches. Rank 0 prints the line, for its own batches.
"""

import argparse
import os
import sys
import time

import torch
import torchvision

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))


def millrace_batches(args):
    """(float NCHW tensor, int64 labels) from millrace's train recipe, epoch after epoch: this
    rank's share of each epoch under torch.distributed."""
    import millrace.torch

    overrides = {"files.root": args.root, "batch.size": args.batch,
                 "pipeline.threads": args.threads,
                 "normalize.mean": [255 * m for m in IMAGENET_MEAN]}
    if args.dtype == "float32":
        overrides.update({"normalize.dtype": "float32",
                          "normalize.std": [255 * s for s in IMAGENET_STD]})
    # int8 = pixel - round(255 * mean): one unit is one pixel unit, so dividing by 255 * std gives
    # torchvision's (pixel / 255 - mean) / std, up to the rounding of the mean.
    inv_std = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(1, 3, 1, 1)
    with millrace.torch.Loader(args.config, overrides) as loader:
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for x, y in loader:  # x views the engine's buffer (no copy); y is int64
                if args.dtype == "int8":
                    x = x.float().mul_(inv_std)
                yield x, y
            epoch += 1


def dataloader_batches(args):
    """The same recipe with torch.utils.data.DataLoader and torchvision's transforms."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from torchvision.datasets.folder import default_loader

    items = []
    with open(os.path.join(args.root, "labels.lst")) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            items.append((os.path.join(args.root, fields[-1]), int(float(fields[1]))))

    class Files(Dataset):
        transform = transforms.Compose([
            transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            path, label = items[i]
            return self.transform(default_loader(path)), label

    loader = DataLoader(Files(), batch_size=args.batch, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        worker_init_fn=lambda _: torch.set_num_threads(1))
    while True:
        for x, y in loader:
            yield x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset folder with labels.lst")
    parser.add_argument("--loader", choices=["millrace", "dataloader"], default="millrace")
    parser.add_argument("--model", default="resnet18",
                        help="a torchvision classifier to train, or 'none' (data rate only)")
    parser.add_argument("--steps", type=int, default=20, help="batches to take")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--config", default=os.path.join(SOURCE, "configs", "train.yaml"),
                        help="millrace's recipe (configs/train_reduced.yaml decodes only the crop)")
    parser.add_argument("--dtype", choices=["float32", "int8"], default="float32",
                        help="what millrace delivers (int8: converted to float in the loop)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="millrace's worker threads")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first batch is not timed)")

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_* from torchrun
    leader = not distributed or torch.distributed.get_rank() == 0

    torch.manual_seed(0)
    model = None
    if args.model != "none":
        model = getattr(torchvision.models, args.model)(weights=None, num_classes=1000)
        model.train()
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

    batches = millrace_batches(args) if args.loader == "millrace" else dataloader_batches(args)
    first = None
    images = 0
    checksum = 0.0
    for step, (x, y) in enumerate(batches):
        if first is None:
            first = time.perf_counter()
        else:
            images += x.shape[0]
        if model is not None:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            checksum += loss.item()
        else:
            checksum += float(x[:, :, 0, 0].sum())  # touch the data, as a step would
        if step + 1 == args.steps:
            break
    seconds = time.perf_counter() - first
    if not leader:
        batches.close()
        torch.distributed.destroy_process_group()
        return
    print(f"{args.loader}: {images} images in {seconds:.3f} s, {images / seconds:.1f} images/s "
          f"(model {args.model}, batch {args.batch}, checksum {checksum:.4g}, "
          f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}, "
          f"mean {float(x.mean()):.3f}, std {float(x.std()):.3f})")
    sys.stdout.flush()
    # The DataLoader's worker processes and millrace's threads stop with the generator.
    batches.close()
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
