"""Where a GPU waited, from a torch.profiler Chrome trace: busy share, idle gaps and what the host did then.

    python benchmarks/trace_gaps.py runs/.../trace.json.gz bare.json.gz

For each trace (labkit writes one for its profiled steps, ``measure.profile_steps``; the bare loops write one
with ``--trace``): GPU work (kernels, copies, sets) over the span from the first to the last, the idle gaps
longer than ``--min-gap-us``, and for the longest gaps the CPU operator that launched the work after the gap
(the host was late) and any host call that blocked while the GPU sat idle (a synchronisation). Then the host
side: on the thread that launched most of the GPU work, the share of the span its operators covered and the
median time of its most frequent operators, which tells a host that is slower at everything (another core, a
slower clock, a thread holding the interpreter) from one that does more. One JSON line per trace, then the
longest gaps.
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import json
import statistics
from collections import Counter
from pathlib import Path

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
BLOCKING = ("Synchronize", "cudaMemcpy", "cudaHostAlloc", "cudaFree", "cudaMalloc")


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    return [e for e in trace.get("traceEvents", trace) if e.get("ph") == "X" and "dur" in e]


def analyse(events: list[dict], min_gap_us: float = 20.0, top: int = 10) -> dict:
    """Busy share and idle gaps of the GPU work in ``events``, each gap with what the host was doing."""
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    if not gpu:
        return {"gpu_events": 0}
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    launches = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    ops = sorted((e for e in events if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
    op_starts = [e["ts"] for e in ops]

    def launching_op(kernel: dict) -> str:
        """The innermost CPU operator around the runtime call that launched ``kernel``."""
        call = launches.get(kernel.get("args", {}).get("correlation"))
        if call is None:
            return "?"
        last = bisect.bisect_right(op_starts, call["ts"])  # the 199 operators that began last before the call
        around = [op for op in ops[max(0, last - 199): last]
                  if call["ts"] <= op["ts"] + op["dur"] and op.get("tid") == call.get("tid")]
        return min(around, key=lambda op: op["dur"])["name"] if around else call["name"]

    busy, gaps, end = 0.0, [], gpu[0]["ts"]
    for e in gpu:
        start, stop = e["ts"], e["ts"] + e["dur"]
        if start - end > min_gap_us:
            gaps.append((start - end, end, e))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = end - gpu[0]["ts"]
    blocking = [e for e in runtime if any(b in e["name"] for b in BLOCKING) and e["dur"] > min_gap_us]
    longest = []
    for length, at, after in sorted(gaps, key=lambda g: g[0], reverse=True)[:top]:
        blocked = [f"{b['name']} {b['dur']:.0f}us" for b in blocking if b["ts"] < at + length and b["ts"] + b["dur"] > at]
        longest.append({"gap_us": round(length, 1), "next_gpu_work": after["name"][:60],
                        "launched_by": launching_op(after), "host_blocked_in": blocked})
    by_call = Counter()
    for b in blocking:
        by_call[b["name"]] += b["dur"]
    return {"gpu_events": len(gpu), "span_ms": round(span / 1e3, 2), "gpu_busy": round(busy / span, 4),
            "idle_ms": round((span - busy) / 1e3, 2), "gaps_over_min": len(gaps),
            "idle_in_gaps_ms": round(sum(g[0] for g in gaps) / 1e3, 2),
            "blocking_host_calls_ms": {k: round(v / 1e3, 2) for k, v in by_call.most_common(8)},
            "host": host_side(ops, runtime, gpu[0]["ts"], end), "longest_gaps": longest}


def host_side(ops: list[dict], runtime: list[dict], start: float, end: float, common: int = 6) -> dict:
    """On the thread that made most runtime calls: the share of [start, end] covered by its operators, how many
    operators it ran, and the median microseconds of its ``common`` most frequent ones."""
    threads = Counter(e.get("tid") for e in runtime)
    if not threads:
        return {}
    tid = threads.most_common(1)[0][0]
    mine = [e for e in ops if e.get("tid") == tid and e["ts"] < end and e["ts"] + e["dur"] > start]
    covered, reach = 0.0, start
    for e in mine:  # sorted by start: the union of the operators' intervals, nested ones counted once
        lo, hi = max(e["ts"], reach), min(e["ts"] + e["dur"], end)
        if hi > lo:
            covered, reach = covered + hi - lo, hi
    durations: dict[str, list[float]] = {}
    for e in mine:
        durations.setdefault(e["name"], []).append(e["dur"])
    frequent = sorted(durations.items(), key=lambda kv: len(kv[1]), reverse=True)[:common]
    return {"operators": len(mine), "busy": round(covered / (end - start), 4) if end > start else None,
            "median_us": {name: round(statistics.median(d), 1) for name, d in frequent}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("traces", nargs="+", type=Path)
    p.add_argument("--min-gap-us", type=float, default=20.0)
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args(argv)
    for path in args.traces:
        result = analyse(load(path), args.min_gap_us, args.top)
        longest = result.pop("longest_gaps", [])
        print(json.dumps({"trace": str(path), **result}))
        for g in longest:
            print(f"  {g['gap_us']:>9.1f} us idle, then {g['next_gpu_work']} (launched in {g['launched_by']})"
                  + (f"; host blocked in {', '.join(g['host_blocked_in'])}" if g["host_blocked_in"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
