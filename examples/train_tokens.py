"""Train a small sequence classifier on token sequences stored in a RaggedMmap.

    python examples/train_tokens.py [--steps 200] [--workers 2 | --threads 2]

Writes 20,000 random token sequences (16-255 tokens) whose label is whether token 7 occurs in
them, then trains an embedding + GRU model with a DataLoader that fetches each batch as one
padded array (RaggedBatches) and turns it into tensors without copying (collate), or with
mmap_ninja.pytorch.Loader, which makes the same batches with threads. Needs torch.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmap_ninja.pytorch import Loader, RaggedBatches, collate
from mmap_ninja.ragged import RaggedMmap

VOCABULARY = 1000


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 32, padding_idx=0)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, 2)

    def forward(self, tokens, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1), batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.rnn(packed)
        return self.out(hidden[-1])


def write_data(folder: Path, n: int = 20_000) -> RaggedMmap:
    rng = np.random.default_rng(0)
    sequences = (rng.integers(1, VOCABULARY, size=rng.integers(16, 256), dtype=np.int32) for _ in range(n))
    return RaggedMmap.from_generator(folder / "tokens", sequences, batch_size=4096, n=n, verbose=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="make batches with mmap_ninja.pytorch.Loader and this many threads instead")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mmap_ninja_train_"))
    try:
        dataset = RaggedBatches(write_data(folder), max_len=256, dtype=np.int64)
        if args.threads is not None:
            loader = Loader(dataset, batch_size=64, shuffle=True, drop_last=True, collate_fn=collate,
                            num_threads=args.threads)
        else:
            loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, drop_last=True,
                                                 num_workers=args.workers, collate_fn=collate)
        model = Classifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        step, started, seen = 0, time.perf_counter(), 0
        while step < args.steps:
            for batch in loader:
                tokens = batch["input"]
                logits = model(tokens, batch["lengths"])
                target = (tokens == 7).any(dim=1).long()  # the label: does token 7 occur?
                loss = nn.functional.cross_entropy(logits, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                seen += len(tokens)
                if step % 50 == 0:
                    accuracy = (logits.argmax(1) == target).float().mean().item()
                    print(f"step {step}: loss {loss.item():.3f}, batch accuracy {accuracy:.2f}, "
                          f"{seen / (time.perf_counter() - started):,.0f} samples/s", flush=True)
                if step >= args.steps:
                    break
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
