"""The length-grouped sampler: every example once per epoch, batches alike in length, also sharded over ranks."""
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

import labkit
from labkit.data.packing import LengthGroupedSampler


def lengths(n: int, seed: int = 0) -> list[int]:
    return torch.randint(8, 385, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def spread(order: list[int], size: int, length: list[int]) -> float:
    """Mean (longest - shortest) over consecutive batches of ``size``."""
    batches = [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
    return sum(max(length[j] for j in b) - min(length[j] for j in b) for b in batches) / len(batches)


def test_every_example_once_per_epoch_in_length_alike_batches():
    length = lengths(1003)  # not a multiple of the group: one short group, last
    sampler = LengthGroupedSampler(length, group_size=16, seed=3, megabatch_groups=8)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(1003)) and len(sampler) == 1003
        assert max(length[i] for i in order[:16]) == max(length)  # the longest batch first
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]  # reshuffled each epoch
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]  # and reproducible
    shuffled = torch.randperm(1003, generator=torch.Generator().manual_seed(0)).tolist()
    assert spread(orders[0], 16, length) < 0.25 * spread(shuffled, 16, length)


def test_sharded_over_two_ranks_as_fabric_does():
    """Fabric wraps a task's sampler in DistributedSamplerWrapper (shuffle off): rank r takes every r-th index."""
    length = lengths(640, seed=1)
    batch, world = 8, 2
    sampler = LengthGroupedSampler(length, group_size=batch * world, seed=0)
    shards = []
    for rank in range(world):
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False)
        wrapper.set_epoch(1)  # forwarded to the sampler: both ranks draw the same epoch
        shards.append(list(wrapper))
    assert sorted(shards[0] + shards[1]) == list(range(640))  # every example exactly once over both ranks
    sampler.set_epoch(1)
    groups = [set(g.tolist()) for g in torch.tensor(list(sampler)).split(batch * world)]
    for k, group in enumerate(groups):  # each rank's k-th batch comes from the k-th group: alike in length
        for shard in shards:
            assert set(shard[k * batch:(k + 1) * batch]) <= group
    assert spread(shards[0], batch, length) < 0.25 * spread(list(range(640)), batch, length)


def test_dynamic_padding_with_length_groups_trains(tmp_path):
    record = labkit.run("params/01_baseline_bert_squad/baseline.yaml", "smoke",
                        {"data.padding": "dynamic", "data.group_by_length": True, "data.context_length": "squad",
                         "train.max_steps": 6, "train.log_every": 2, "data.train_examples": 160, "data.val_examples": 16},
                        tmp_path)
    info, s = record["info"], record["summary"]
    assert record["status"] == "ok" and s["steps"] == 6 and info["group_by_length"]
    # Grouped batches pad little: the mean padded width is close to the mean real length, well under max_length.
    assert info["mean_real_tokens"] <= info["mean_padded_tokens"] < 1.3 * info["mean_real_tokens"] + 8
    assert info["mean_padded_tokens"] < record["params"]["data"]["max_length"]
