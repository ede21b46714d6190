"""own_loop.py under DDP: every rank streams its own chunks of the cache (docs/api.md).

    torchrun --nproc_per_node 2 examples/own_loop_ddp.py CACHE [--data-dir DIR] [--epochs 2]

gloo on CPU, nccl on CUDA (one GPU per rank). ``--batch-size`` is per rank. ``--timeout``
bounds how long a rank waits in a collective for a peer that hangs (stopped, not killed: a killed
peer is noticed in seconds); the process group's default is 30 minutes.
"""

import argparse
import os
from datetime import timedelta

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import kdcache
import kdcache.models  # noqa: F401  (registers the CIFAR zoo in timm as cifar_*)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--student", default="cifar_resnet20")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (default 5 min)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    # A hung peer fails the other ranks' collectives after `timeout` instead of 30 minutes.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=args.timeout))
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    cache = kdcache.open_cache(args.cache)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = timm.create_model(args.student, num_classes=cache.classes, in_chans=cache.in_chans)
    model = DistributedDataParallel(model.to(device), device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    distill = kdcache.create_loss("ldrld")
    for epoch in range(args.epochs):
        model.train()
        # Under torch.distributed the loader takes this rank's share; every rank runs len(batches).
        batches = cache.loader(
            args.data_dir, batch_size=args.batch_size, seed=args.seed, epoch=epoch, device=device
        )
        samples = 0
        for batch in batches:
            logits = model(batch.images)
            loss = F.cross_entropy(logits, batch.labels) + distill(
                logits, batch.teacher_logits, batch.labels
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += len(batch.labels)
        if rank == 0:  # evaluate on one rank, with the unwrapped model
            model.module.eval()
            correct = seen = 0
            with torch.no_grad():
                for batch in cache.eval_loader(args.data_dir, device=device):
                    correct += (model.module(batch.images).argmax(1) == batch.labels).sum().item()
                    seen += len(batch.labels)
            print(f"epoch {epoch + 1}: top-1 {100 * correct / seen:.2f}%")
        print(f"rank {rank} epoch {epoch + 1}: {samples} samples in {len(batches)} steps")
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
