"""One rank of a multi-process run; labkit.launch.distributed.launch starts it through torchrun:

    python -m torch.distributed.run --nproc-per-node 2 --standalone -m labkit.launch.worker runs/.../launch/spec.json

It runs the configuration with labkit.launch.runner.execute (rank 0 writes the results record) and leaves
its own status beside the spec, rank<N>.json, so the launcher can tell which rank failed first.
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from labkit import results
from labkit.config import Config
from labkit.launch.runner import execute


def main(argv: list[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the launcher's stack dump of a hung rank
    spec_path = Path((argv or sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text())
    rank = int(os.environ["RANK"])
    status = spec_path.parent / f"rank{rank}.json"

    def report(state: str, **extra) -> None:
        results.write_json_atomic(status, {"rank": rank, "status": state, "time": time.time(), "pid": os.getpid(),
                                           "host": socket.gethostname(), **extra})

    report("running")  # with the pid the launcher signals for that dump
    try:
        record = execute(Config.model_validate(spec["params"]), spec["identity"], Path(spec["directory"]))
    except BaseException as err:
        report("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    report(record["status"], error=record.get("error"))
    return 0 if record["status"] in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
