import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on now, for a process group's rendezvous (gloo ranks on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_thread(monkeypatch, request) -> None:
    """One math thread, here (runs made in this process with labkit.run) and in the processes started from here
    (notebook kernels, ranks): on a busy 2-core machine, threads waiting on each other cost far more than they gain."""
    import torch  # here, not at the top: most tests never need it

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(1)


# Files whose tests time real processes against limits (ranks, a scheduler, signals): `make test` runs them after
# the others, one at a time, so that no other test's processes share the cores with them.
SERIAL = {"test_slurm_cluster.py", "test_distributed.py", "test_resume.py", "test_fsdp_gradients.py"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in SERIAL:
            item.add_marker(pytest.mark.serial)
