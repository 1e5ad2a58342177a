"""CIFAR-10: the reader of the real pickle format, the generator, augmentation and both data sets."""
import pickle
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.data import resident
from labkit.tasks import cifar_resnext
from labkit.config import Config, ConfigError, load
from labkit.data.synthetic.cifar import generate_cifar


def write_cifar(folder, per_batch=6, seed=0):
    """A small cifar-10-batches-py folder as torchvision downloads it (same keys, layout and dtype)."""
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(root / name, "wb") as f:
            pickle.dump({"batch_label": f"{name} of 6", "labels": labels, "data": data,
                         "filenames": [f"img_{i}.png" for i in range(per_batch)]}, f, protocol=2)
        written[name] = (data, labels)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(cifar_resnext.CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return root, written


def test_reader_reads_the_real_layout(tmp_path):
    root, written = write_cifar(tmp_path)
    images, labels = cifar_resnext.read_batches(tmp_path, "train")  # the folder holding cifar-10-batches-py works too
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    data, first_labels = written["data_batch_1"]
    # row = 1024 red values, then green, then blue, each plane row-major
    assert images[0, 0, 0, 1] == data[0, 1] and images[0, 1, 0, 0] == data[0, 1024] and images[0, 2, 31, 31] == data[0, 3071]
    assert images[2, 0, 1, 0] == data[2, 32]
    assert labels[:6].tolist() == first_labels and labels[6:12].tolist() == written["data_batch_2"][1]
    test_images, test_labels = cifar_resnext.read_batches(root, "test")
    assert len(test_images) == 6 and test_labels.tolist() == written["test_batch"][1]


def test_reader_explains_a_wrong_folder(tmp_path):
    root, _ = write_cifar(tmp_path)
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.*cifar-10-batches-py"):
        cifar_resnext.read_batches(root, "train")


def test_local_source_builds_the_task(tmp_path):
    write_cifar(tmp_path)
    cfg = Config.model_validate({"task": "cifar_resnext", "data": {"source": "local", "path": str(tmp_path), "train_examples": 20},
                                 "model": {"preset": "tiny"}, "train": {"batch_size": 4}})
    task = cifar_resnext.build_task(cfg)
    assert len(task.train_set) == 20 and len(task.val_set) == 6
    assert task.info["data_source"].startswith("CIFAR-10") and task.info["weights"] == "random"
    x, y = task.train_set[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) < 10
    assert 0 <= task.evaluate(task.model.eval(), 64, None)["accuracy"] <= 1


def test_hub_without_torchvision_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        cifar_resnext.download(tmp_path)


def test_generator_shape_determinism_and_learnable_structure():
    images, labels = generate_cifar(2500, "train", seed=0)
    assert images.shape == (2500, 3, 32, 32) and images.dtype == torch.uint8
    assert set(labels.tolist()) == set(range(10))
    head, head_labels = generate_cifar(700, "train", seed=0)
    assert torch.equal(head, images[:700]) and torch.equal(head_labels, labels[:700])
    assert not torch.equal(generate_cifar(700, "test", seed=0)[0], head)
    # the documented structure: mean colour gives the hue (class mod 5), stripe direction the class // 5
    x = images.float()
    colour = x.mean((2, 3))
    centroids = torch.stack([colour[labels % 5 == h].mean(0) for h in range(5)])
    hue_accuracy = (torch.cdist(colour, centroids).argmin(1) == labels % 5).float().mean()
    vertical = (x.diff(dim=3).abs().mean((1, 2, 3)) > x.diff(dim=2).abs().mean((1, 2, 3))).long()
    stripe_accuracy = (vertical == labels // 5).float().mean()
    assert hue_accuracy > 0.8 and stripe_accuracy > 0.8


def test_augment_is_a_padded_crop_and_flip_per_image():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = cifar_resnext.augment(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    seen = set()
    for b in range(16):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[b], (lambda c: c.flip(-1) if flip else c)(padded[b, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {b} is not a crop of its padded self"
        seen.add(matches[0])
    assert len(seen) > 8 and {m[2] for m in seen} == {False, True}  # offsets and flips vary per image


def test_loader_workers_get_different_augmentations():
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    data = cifar_resnext.CIFAR(image.repeat(8, 1, 1, 1), torch.zeros(8, dtype=torch.long), torch.full((3,), 0.5),
                       torch.full((3,), 0.25), train=True)
    batches = [x for x, _ in DataLoader(data, batch_size=4, num_workers=2)]  # one batch from each worker
    assert len(batches) == 2 and not torch.equal(batches[0], batches[1])


def test_resident_set_fetches_whole_batches():
    images, labels = generate_cifar(40, "train")
    mean, std = cifar_resnext.channel_stats(images)
    data = cifar_resnext.ResidentCIFAR(images, labels, mean, std, train=False, device=torch.device("cpu"))
    calls = []
    original = data.__getitems__
    data.__getitems__ = lambda idx: calls.append(len(idx)) or original(idx)
    loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=resident.whole_batch, drop_last=True)
    x, y = next(iter(loader))
    assert calls == [16] and x.shape == (16, 3, 32, 32) and y.shape == (16,)
    first = int(torch.nonzero((cifar_resnext.normalize(images, mean, std) == x[0]).all(dim=(1, 2, 3)))[0])
    assert labels[first] == y[0]  # the labels travel with their images
    augmented = cifar_resnext.ResidentCIFAR(images, labels, mean, std, train=True, device=torch.device("cpu"))
    assert augmented.__getitems__([0, 1])[0].shape == (2, 3, 32, 32)


def test_gpu_resident_config_rejects_workers():
    with pytest.raises(ConfigError, match="data.num_workers: 0"):
        load("params/02_dataloader_workers/gpu_resident.yaml", "smoke", {"data.num_workers": 2})


def test_channels_last_weights_get_channels_last_input(tmp_path):
    write_cifar(tmp_path)
    seen = []
    for channels_last in (False, True):
        cfg = Config.model_validate({"task": "cifar_resnext", "data": {"source": "local", "path": str(tmp_path), "train_examples": 8},
                                     "model": {"preset": "tiny", "channels_last": channels_last}, "train": {"batch_size": 4}})
        task = cifar_resnext.build_task(cfg)
        stem = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d))
        stem.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        images, labels = next(iter(DataLoader(task.train_set, batch_size=4)))
        task.loss(task.model, (images, labels)).backward()
    assert seen == [False, True]  # the loader's NCHW batch is converted only when the weights are channels-last


class RunsACommand:
    """What a crafted batch holds: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_the_reader_builds_only_what_the_format_holds(tmp_path):
    root, _ = write_cifar(tmp_path)
    marker = tmp_path / "ran"
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({"data": RunsACommand(f"touch {marker}"), "labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3: not a readable CIFAR-10 batch .*refers to (posix|os)\.system"):
        cifar_resnext.read_batches(root, "train")
    assert not marker.exists()
    # Any protocol numpy and Python 3 write is still read: arrays, dtypes, bytes.
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": np.array([1, 2]), "batch_label": b"x"}, f,
                    protocol=pickle.HIGHEST_PROTOCOL)
    assert len(cifar_resnext.read_batches(root, "train")[1]) == 4 * 6 + 2


def test_a_cut_batch_and_a_label_out_of_range_name_the_file(tmp_path):
    root, _ = write_cifar(tmp_path)
    whole = (root / "data_batch_2").read_bytes()
    (root / "data_batch_2").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"data_batch_2: not a readable CIFAR-10 batch \(UnpicklingError: pickle data was truncated"):
        cifar_resnext.read_batches(root, "train")
    (root / "data_batch_2").write_bytes(whole)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 10, 2]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch: label 10 of image 1 is outside 0\.\.9"):
        cifar_resnext.read_batches(root, "test")


def test_resident_indices_stay_a_tensor_on_the_cpu():
    idx = resident.indices_on([3, 1, 2], torch.device("cpu"))
    assert idx.tolist() == [3, 1, 2] and not idx.is_pinned()


def test_data_seed_holds_the_generated_images_while_train_seed_varies():
    """data.seed fixes the generated data set, so train.seed alone varies a run (initialisation, order, augmentation):
    the bench's noise band for a loss curve. Unset, the data follow train.seed."""
    def first_image(**settings):
        cfg = Config.model_validate({"task": "cifar_resnext", "model": {"preset": "tiny"},
                                     "data": {"train_examples": 8, "val_examples": 4, "augment": False, **settings.get("data", {})},
                                     "train": {"batch_size": 4, "seed": settings["seed"]}})
        return cifar_resnext.build_task(cfg).train_set[0][0]

    assert torch.equal(first_image(seed=0), first_image(seed=1, data={"seed": 0}))
    assert not torch.equal(first_image(seed=0), first_image(seed=1))
