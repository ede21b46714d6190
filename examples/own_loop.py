"""Distil a student from a kdcache cache in your own PyTorch loop (docs/api.md).

python examples/own_loop.py CACHE [--data-dir DIR] [--student cifar_resnet20] [--epochs 2]
"""

import argparse

import timm
import torch
import torch.nn.functional as F

import kdcache
import kdcache.models  # noqa: F401  (registers the CIFAR zoo in timm as cifar_*)


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--student", default="cifar_resnet20")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cache = kdcache.open_cache(args.cache)
    print(cache)
    torch.manual_seed(args.seed)
    model = timm.create_model(args.student, num_classes=cache.classes, in_chans=cache.in_chans)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    distill = kdcache.create_loss("ldrld")  # Xu et al., ICCV 2025; defaults k=7, T=4
    losses = []
    for epoch in range(args.epochs):
        model.train()
        batches = cache.loader(
            args.data_dir, batch_size=args.batch_size, seed=args.seed, epoch=epoch
        )
        for batch in batches:  # images [B, C, H, W], labels [B], teacher_logits [B, K]
            logits = model(batch.images)
            loss = F.cross_entropy(logits, batch.labels) + distill(
                logits, batch.teacher_logits, batch.labels
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for batch in cache.eval_loader(args.data_dir):
                correct += (model(batch.images).argmax(1) == batch.labels).sum().item()
                seen += len(batch.labels)
        print(f"epoch {epoch + 1}: loss {losses[-1]:.4f}, test top-1 {100 * correct / seen:.2f}%")
    return losses


if __name__ == "__main__":
    main()
