"""TaskBatchSampler: one file per global batch on every rank, coverage, proportions, resume, workers."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from llm_embedder.data.sampler import TaskBatchSampler
from llm_embedder.errors import UserError

SIZES = [12, 20, 8]
OFFSETS = [0, 12, 32, 40]


def file_of(index: int) -> int:
    return next(f for f in range(len(SIZES)) if OFFSETS[f] <= index < OFFSETS[f + 1])


def ranks(sizes=SIZES, per_device=2, world_size=2, **kwargs):
    return [TaskBatchSampler(sizes, per_device, world_size=world_size, rank=r, **kwargs) for r in range(world_size)]


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_every_global_batch_comes_from_one_file_on_both_ranks(mode):
    r0, r1 = ranks(mode=mode, seed=5)
    for epoch in range(3):
        r0.set_epoch(epoch)
        r1.set_epoch(epoch)
        b0, b1 = list(r0), list(r1)
        assert len(b0) == len(b1) == len(r0)
        for x, y in zip(b0, b1):
            assert len(x) == len(y) == 2
            assert {e for e, _ in x + y} == {epoch}
            indices = [i for _, i in x + y]
            assert len({file_of(i) for i in indices}) == 1  # task-homogeneous across ranks
            assert len(set(indices)) == 4  # the two slices do not overlap


def test_ranks_slice_the_same_global_plan():
    r0, r1 = ranks(seed=9)
    plan = r0.global_batches(0)
    assert plan == r1.global_batches(0)
    assert [[i for _, i in b] for b in r0] == [batch[:2] for _, batch in plan]
    assert [[i for _, i in b] for b in r1] == [batch[2:] for _, batch in plan]


def test_epoch_mode_sees_every_example_exactly_once():
    sampler = TaskBatchSampler(SIZES, 4, mode="epoch", seed=1)  # every size is a multiple of 4
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for _, i in batch]
        assert sorted(seen) == list(range(sum(SIZES)))
    assert sampler.dropped == [0, 0, 0]


def test_epoch_mode_tail_is_dropped_and_counted_or_padded():
    sizes = [10, 7]  # global batch 4: tails of 2 and 3
    dropping = TaskBatchSampler(sizes, 2, world_size=2, mode="epoch", seed=3)
    assert dropping.dropped == [2, 3] and len(dropping) == 2 + 1
    seen = [i for _, batch in dropping.global_batches(0) for i in batch]
    assert len(seen) == len(set(seen)) == 17 - 5
    padding = TaskBatchSampler(sizes, 2, world_size=2, mode="epoch", seed=3, drop_last=False)
    plan = padding.global_batches(0)
    assert len(padding) == len(plan) == 3 + 2 and padding.dropped == [0, 0]
    assert all(len(batch) == 4 for _, batch in plan)
    assert set(i for _, batch in plan for i in batch) == set(range(17))  # every example at least once
    for f, batch in plan:
        assert len(set(batch)) == 4 and all((i < 10) == (f == 0) for i in batch)


def test_epochs_and_seeds_change_the_plan_deterministically():
    a = TaskBatchSampler(SIZES, 4, seed=1)
    assert a.global_batches(0) == TaskBatchSampler(SIZES, 4, seed=1).global_batches(0)
    assert a.global_batches(0) != a.global_batches(1)
    assert a.global_batches(0) != TaskBatchSampler(SIZES, 4, seed=2).global_batches(0)


def test_epoch_mode_interleaves_files():
    files = [f for f, _ in TaskBatchSampler([400, 400], 4, seed=0).global_batches(0)]
    assert files != sorted(files) and sum(a != b for a, b in zip(files, files[1:])) > 20


@pytest.mark.parametrize("weights, expected", [(None, [0.1, 0.3, 0.6]), ([1.0, 1.0, 2.0], [0.25, 0.25, 0.5])])
def test_random_mode_draws_files_in_proportion(weights, expected):
    sizes = [400, 1200, 2400]
    sampler = TaskBatchSampler(sizes, 4, mode="random", dataset_weights=weights, seed=0)
    offsets = np.cumsum([0] + sizes)
    counts = Counter()
    for epoch in range(3):
        for f, batch in sampler.global_batches(epoch):
            assert all(offsets[f] <= i < offsets[f + 1] for i in batch)
            counts[f] += 1
    total = sum(counts.values())
    assert total == 3 * len(sampler) == 3 * 1000
    for f, p in enumerate(expected):
        assert abs(counts[f] / total - p) < 0.03, (counts, expected)  # ~4 binomial standard deviations


def test_random_mode_does_not_repeat_an_example_before_its_file_is_used_up():
    sampler = TaskBatchSampler([20, 40], 4, mode="random", dataset_weights=[1, 1], seed=4)
    per_file: dict[int, list[int]] = {0: [], 1: []}
    for f, batch in sampler.global_batches(0):
        per_file[f].extend(batch)
    for f, size in enumerate([20, 40]):
        seen = per_file[f]
        for start in range(0, len(seen), size):  # each pass over a file is a fresh shuffle
            chunk = seen[start:start + size]
            assert len(chunk) == len(set(chunk))
    assert len(per_file[0]) > 20  # weights 1:1 make the small file wrap within the epoch


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_resume_mid_epoch_yields_the_remaining_batches(mode):
    full = TaskBatchSampler(SIZES, 2, world_size=2, rank=1, mode=mode, seed=13)
    full.set_epoch(1)
    expected = list(full)
    run = TaskBatchSampler(SIZES, 2, world_size=2, rank=1, mode=mode, seed=13)
    run.set_epoch(1)
    it = iter(run)
    consumed = [next(it) for _ in range(4)]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["batches_consumed"] == 4
    resumed = TaskBatchSampler(SIZES, 2, world_size=2, rank=1, mode=mode, seed=13)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what the Trainer calls at the start of the resumed epoch: keeps the position
    assert consumed + list(resumed) == expected
    resumed.set_epoch(2)
    full.set_epoch(2)
    assert list(resumed) == list(full)  # the next epoch is whole again


def test_state_dict_with_the_loop_count_and_mismatched_settings():
    sampler = TaskBatchSampler(SIZES, 4, seed=0)
    it = iter(sampler)
    for _ in range(6):  # a prefetching loader pulled 6, the loop used 3
        next(it)
    state = sampler.state_dict(batches_consumed=3)
    resumed = TaskBatchSampler(SIZES, 4, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == list(TaskBatchSampler(SIZES, 4, seed=0))[3:]
    with pytest.raises(UserError, match="cannot resume the batch sampler: seed was 0, now 1"):
        TaskBatchSampler(SIZES, 4, seed=1).load_state_dict(state)
    with pytest.raises(UserError, match="global_batch_size was 4, now 8"):
        TaskBatchSampler(SIZES, 4, world_size=2, seed=0).load_state_dict(state)


class _IndexEcho(torch.utils.data.Dataset):
    """Stateless dataset whose item encodes (epoch, index) and the worker that produced it."""

    def __getitem__(self, item):
        epoch, index = item
        return torch.tensor([epoch, index])

    def __len__(self):
        return sum(SIZES)


def test_dataloader_with_two_workers_gives_the_same_batches():
    sampler = TaskBatchSampler(SIZES, 4, mode="random", seed=21)
    sampler.set_epoch(3)
    expected = [torch.tensor(b) for b in sampler]
    loader = torch.utils.data.DataLoader(_IndexEcho(), batch_sampler=sampler, num_workers=2)
    got = list(loader)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    # resume through a fresh loader with workers
    resumed = TaskBatchSampler(SIZES, 4, mode="random", seed=21)
    resumed.load_state_dict({"epoch": 3, "batches_consumed": 5})
    tail = list(torch.utils.data.DataLoader(_IndexEcho(), batch_sampler=resumed, num_workers=2))
    assert all(torch.equal(a, b) for a, b in zip(tail, expected[5:])) and len(tail) == len(expected) - 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="epoch", dataset_weights=[1, 1, 1]), "--dataset_weights: only used with --inbatch_same_dataset random"),
    (dict(mode="random", dataset_weights=[1, 1]), "--dataset_weights: 2 weights for 3 train files"),
    (dict(mode="random", dataset_weights=[1, -1, 1]), "--dataset_weights: must be finite, >= 0"),
    (dict(mode="random", dataset_weights=[0, 0, 0]), "--dataset_weights: must be finite, >= 0 and not all 0"),
    (dict(mode="sequential"), "--inbatch_same_dataset: unknown mode 'sequential'"),
    (dict(per_device_batch_size=5), r"file #2 has 8 examples, fewer than one global batch .* = 10\): it would never "
                                    r"be trained on; lower --per_device_train_batch_size or use fewer processes"),
])
def test_bad_settings_are_user_errors(kwargs, message):
    kwargs = {"per_device_batch_size": 2, "world_size": 2, **kwargs}
    with pytest.raises(UserError, match=message):
        TaskBatchSampler(SIZES, **kwargs)


def test_small_file_is_padded_without_drop_last():
    sampler = TaskBatchSampler([3, 16], 4, drop_last=False, seed=0)
    small = [batch for f, batch in sampler.global_batches(0) if f == 0]
    assert len(small) == 1 and len(small[0]) == 4 and set(small[0]) == {0, 1, 2}


def _items(batch):
    return batch  # keep the dataset's dicts as they are


def test_train_dataset_items_are_identical_in_two_workers(toy_dir):
    from llm_embedder.data.dataset import TrainDataset

    dataset = TrainDataset([toy_dir], train_group_size=4, seed=5)
    sampler = TaskBatchSampler(dataset.file_sizes, 2, world_size=2, rank=1, seed=5)
    sampler.set_epoch(2)
    expected = [[dataset[i] for i in batch] for batch in sampler]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=_items)
    assert list(loader) == expected
    assert {b[0]["task"] for b in expected} == set(dataset.tasks)
