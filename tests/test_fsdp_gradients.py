"""FSDP2 as labkit shards a model (labkit.train.shard_blocks) gives DDP's gradients, with no view-output
warning: T5, whose first block returns its position bias as a view, over 2 gloo processes on the CPU."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from labkit.config import ModelConfig
from labkit.models import t5

VOCAB = 120


def _batches() -> list[dict[str, torch.Tensor]]:
    """One half of the global batch per rank; the second half's targets are shorter (different token counts)."""
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(3, VOCAB, (2, 12), generator=g),
             "labels": torch.randint(3, VOCAB, (2, length), generator=g)} for length in (7, 4)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return t5.build(ModelConfig(preset="tiny"), VOCAB)[0].eval()  # no dropout: the same function in every process


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from labkit.train import shard_blocks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = shard_blocks(_model(), init_device_mesh("cpu", (world,)), "32")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(**_batches()[rank]).loss.backward()
        grads = {name: p.grad.full_tensor().tolist() for name, p in model.named_parameters()}
        Path(out, f"{rank}.json").write_text(json.dumps({"grads": grads, "warnings": [str(w.message) for w in caught]}))
    finally:
        dist.destroy_process_group()


def test_fsdp2_gradients_equal_ddp_and_no_view_warning(tmp_path, free_port):
    pytest.importorskip("torch.distributed.device_mesh")
    # DDP's gradient: the mean over ranks of each rank's gradient of its own half-batch loss.
    reference = _model()
    for batch in _batches():
        (reference(**batch).loss / 2).backward()
    torch.multiprocessing.start_processes(_rank, args=(2, free_port, str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert not [w for w in result["warnings"] if "view tensor" in w]
        names = dict(reference.named_parameters())
        assert set(result["grads"]) == set(names)
        for name, grad in result["grads"].items():
            torch.testing.assert_close(torch.tensor(grad), names[name].grad, rtol=1e-5, atol=1e-6, msg=name)
