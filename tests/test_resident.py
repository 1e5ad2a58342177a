"""data.on_gpu for SQuAD features: a batch gathered from the resident tensors by its indices is the batch the
CPU path collates; the task builds it only where preflight allows (batches padded to max_length)."""
import torch
from torch.utils.data import DataLoader

from labkit.config import load
from labkit.data import resident
from labkit.tasks import bert_squad

BERT = "params/01_baseline_bert_squad/baseline.yaml"


def test_resident_features_give_the_collated_batches(monkeypatch):
    monkeypatch.setattr(resident, "training_device", lambda: torch.device("cpu"))  # the GPU's place, on a CPU
    host = bert_squad.build_task(load(BERT, "smoke"))
    task = bert_squad.build_task(load(BERT, "smoke", {"data.on_gpu": True}))
    assert isinstance(task.train_set, bert_squad.ResidentFeatures) and isinstance(task.val_set, bert_squad.ResidentFeatures)
    assert task.info["batches"] == "gathered on the GPU"
    loaders = [DataLoader(t.train_set, batch_size=4, shuffle=True, collate_fn=t.collate_fn,
                          generator=torch.Generator().manual_seed(0)) for t in (host, task)]
    batches = 0
    for expected, gathered in zip(*loaders):
        assert expected.keys() == gathered.keys()
        assert all(torch.equal(expected[k], gathered[k]) for k in expected)
        batches += 1
    assert batches == len(loaders[0]) > 1


def test_indices_stay_a_tensor_on_the_cpu():
    idx = resident.indices_on([3, 1, 2], torch.device("cpu"))
    assert idx.tolist() == [3, 1, 2] and not idx.is_pinned()
