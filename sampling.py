"""The order of training: which items each step reads, and with which augmentation seed.

Defines `StepSampler` (batches as a pure function of (seed, step), sliced per rank under
torchrun, as DistributedSampler shards), `MixedSampler` (every batch a fixed number of labelled
and of unlabelled samples, each from its own StepSampler), `seed_of` (a seed from integer keys) and `SeededItems`
(a dataset read through the sampler's (seed, index) keys, so that the colour jitter of an item
depends only on its place in the stream). Together they make `train.py --resume` exact: a
resumed run, any DataLoader worker and any rank draw what the straight run draws.
"""
import numpy as np
import torch


class StepSampler(torch.utils.data.Sampler):
    """Batches of dataset indices as a pure function of (seed, step): a fresh permutation per
    epoch, so resuming at step s replays exactly the batches s, s+1, ... of the first run."""

    def __init__(self, num_items, batch_size, seed, start_step, total_steps, rank=0, world=1):
        self.n, self.b, self.seed = num_items, batch_size, seed
        self.start, self.total = start_step, total_steps
        self.rank, self.world = rank, world  # under torchrun each rank takes its own slice

    def __len__(self):
        return self.total - self.start

    def positions(self, step):
        """Positions of step `step` on this rank in the endless stream of epochs: its slice of the
        global batch of world * batch_size positions (as DistributedSampler shards)."""
        first = (step * self.world + self.rank) * self.b
        return range(first, first + self.b)

    def batch(self, step):
        """Dataset indices (batch_size,) of step `step` on this rank."""
        return [int(self.permutation(p // self.n)[p % self.n]) for p in self.positions(step)]

    def permutation(self, epoch):
        """The order of the items in `epoch` (the last one is kept: a batch rarely spans two)."""
        if getattr(self, "_epoch", None) != epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order

    def __iter__(self):
        """Per step, the keys [(augmentation seed, dataset index)] that SeededItems reads."""
        for s in range(self.start, self.total):
            # The item at position p is augmented with seed_of(seed, p): a resumed run, any worker
            # and any rank draw the same colour jitter for it; other positions (ranks, steps) draw others.
            yield [(seed_of(self.seed, p), i) for p, i in zip(self.positions(s), self.batch(s))]


class MixedSampler(torch.utils.data.Sampler):
    """Batches of labelled items followed by unlabelled ones, in a fixed ratio: the keys of
    `labelled` (a StepSampler over the first items of a ConcatDataset) then those of `unlabelled`
    (a StepSampler over the rest, its indices shifted by `offset`, the labelled set's length).
    Each stream keeps its own permutation and augmentation seeds, so both stay pure functions of
    (seed, step) and resuming stays exact."""

    def __init__(self, labelled, unlabelled, offset):
        self.labelled, self.unlabelled, self.offset = labelled, unlabelled, offset

    def __len__(self):
        return len(self.labelled)

    def __iter__(self):
        for ours, theirs in zip(self.labelled, self.unlabelled):
            yield ours + [(seed, self.offset + index) for seed, index in theirs]


UNLABELLED_STREAM = 1  # key beside the run's seed of the unlabelled stream's order: seed_of(seed, 1)


def mixed_sampler(num_labelled, num_unlabelled, batch_size, unlabelled_batch, seed, start_step, total_steps,
                  rank=0, world=1):
    """The batch order of a run: a StepSampler over the labelled items alone, or, with unlabelled items
    (num_unlabelled > 0), a MixedSampler of batch_size labelled + unlabelled_batch unlabelled items per step,
    the unlabelled order drawn from seed_of(seed, UNLABELLED_STREAM)."""
    labelled = StepSampler(num_labelled, batch_size, seed, start_step, total_steps, rank, world)
    if num_unlabelled == 0 or unlabelled_batch == 0:
        return labelled
    unlabelled = StepSampler(num_unlabelled, unlabelled_batch, seed_of(seed, UNLABELLED_STREAM), start_step,
                             total_steps, rank, world)
    return MixedSampler(labelled, unlabelled, num_labelled)


def seed_of(*keys):
    """A 32-bit seed that is a pure function of the integers `keys` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class SeededItems(torch.utils.data.Dataset):
    """`dataset` read through StepSampler's keys: item (seed, index) is dataset[index] drawn with
    torch's global generator seeded by `seed` (the colour jitter of nusc.py draws from it), and
    the caller's random stream is left untouched, in the main process as in a worker. Each item
    also carries its `index` (an int64 tensor), which names it across epochs (cache.TeacherMemo)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return {**self.dataset[index], "index": torch.tensor(index)}
