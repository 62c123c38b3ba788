"""Train a tiny classifier with DistributedDataParallel on CPU, checkpoint, and resume mid-epoch.

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --workdir runs/ddp [--stop-after 6]

Rank 0 writes 3,000 token sequences into a sharded map (the label: does token 7 occur?). Every
rank reads its share through mmap_ninja.pytorch.DistributedSampler (a locality-preserving
shuffle over the map's parts) and a StatefulDataLoader, trains with the gloo backend, and
saves a checkpoint (model, optimizer, each rank's loader) every few steps. ``--stop-after N``
stops the run after N steps, as a crash would; running the command again resumes from the
checkpoint, in the middle of the epoch, on any number of ranks. Each epoch's end checks that
the ranks together read every sample once (as torch pads, a rank's remainder at most twice).
Needs torch and torchdata.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader

from mmap_ninja.pytorch import DistributedSampler, RaggedBatches, collate
from mmap_ninja.sharded import ShardedMmap

VOCABULARY = 64
N_SAMPLES = 3000


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingBag(VOCABULARY, 16, mode="mean")
        self.out = nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keep = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        return self.out(self.embedding(tokens[keep], offsets))


def write_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    sequences = (rng.integers(0, VOCABULARY, size=rng.integers(4, 40), dtype=np.int64) for _ in range(N_SAMPLES))
    ShardedMmap.from_generator(folder, sequences, part_size=250)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps, as a crash would")
    parser.add_argument("--checkpoint-every", type=int, default=3)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data, checkpoint = args.workdir / "tokens", args.workdir / "checkpoint"
    if rank == 0 and not data.exists():
        write_data(data)
    dist.barrier()

    tokens = ShardedMmap(data)
    sampler = DistributedSampler(tokens, seed=0, block_size="parts")
    loader = StatefulDataLoader(RaggedBatches(tokens), batch_size=32, sampler=sampler, collate_fn=collate,
                                num_workers=2)
    model = nn.parallel.DistributedDataParallel(Classifier())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step, epoch = 0, 0
    if (checkpoint / "model.pt").exists():
        saved = torch.load(checkpoint / "model.pt", weights_only=False)
        model.module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, epoch = saved["step"], saved["epoch"]
        # a run on another number of ranks takes any saved rank's loader: the epoch's order is shared
        loader_states = sorted(checkpoint.glob("loader-*.pt"))
        loader.load_state_dict(torch.load(loader_states[rank % len(loader_states)], weights_only=False))
        read_before = torch.tensor(saved["read_in_epoch"], dtype=torch.long)
        if rank == 0:
            print(f"resumed at step {step}, epoch {epoch}, {int(read_before)} samples of it already read", flush=True)
    else:
        sampler.set_epoch(epoch)
        read_before = torch.tensor(0, dtype=torch.long)

    while epoch < args.epochs:
        read = torch.tensor(0, dtype=torch.long)
        for batch in loader:
            logits = model(batch["input"], batch["lengths"])
            target = torch.stack([(row[:n] == 7).any() for row, n in zip(batch["input"], batch["lengths"])]).long()
            loss = nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            read += len(target)
            if step % args.checkpoint_every == 0:
                total = read.clone()
                dist.all_reduce(total)
                checkpoint.mkdir(exist_ok=True)
                torch.save(loader.state_dict(), checkpoint / f"loader-{rank}.pt")
                if rank == 0:
                    torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step, "epoch": epoch, "read_in_epoch": int(read_before + total)},
                               checkpoint / "model.pt")
                    for stale in checkpoint.glob("loader-*.pt"):  # written by a run on more ranks
                        if int(stale.stem.split("-")[1]) >= world:
                            stale.unlink()
                dist.barrier()
            if args.stop_after is not None and step >= args.stop_after:
                if rank == 0:
                    print(f"stopped at step {step}", flush=True)
                dist.destroy_process_group()
                return
        dist.all_reduce(read)
        read_in_epoch = int(read_before + read)
        if rank == 0:
            print(f"epoch {epoch}: {read_in_epoch} samples read by {world} ranks, loss {loss.item():.3f}",
                  flush=True)
        assert N_SAMPLES <= read_in_epoch < N_SAMPLES + 2 * world, read_in_epoch
        epoch += 1
        read_before = torch.tensor(0, dtype=torch.long)
        sampler.set_epoch(epoch)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
