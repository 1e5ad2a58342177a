"""Where the GPU's time in a profiled run goes, by the library whose kernels spent it.

    python benchmarks/kernel_kinds.py runs/bench/bench/.../trace.json.gz [more traces or folders]

For each torch.profiler trace (labkit keeps one beside a run's record with ``measure.profile_steps`` > 0) the
kernels' time summed by kind: convolutions (cuDNN's kernels, and the CUTLASS and xmma implicit-GEMM kernels it
runs), matrix products (cuBLAS: gemm, nvjet, and other sm90 kernels), kernels inductor generated (Triton), and the
rest; then the kernels that took the most time (``labkit.timeline.top_kernels``). The rules go by kernel name: a
cuBLAS GEMM named xmma counts as a convolution (cuBLAS names its Hopper GEMMs nvjet).
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from labkit import timeline

KINDS = {  # kind -> words in a kernel's name, checked in this order
    "convolution (cuDNN)": ("conv", "cudnn", "xmma", "implicit", "dgrad", "wgrad", "fprop"),
    "matrix product (cuBLAS)": ("gemm", "cutlass", "nvjet", "sm90"),
    "generated (Triton)": ("triton",),
}


def kind_of(name: str) -> str:
    name = name.lower()
    return next((kind for kind, words in KINDS.items() if any(w in name for w in words)), "other")


def kinds(events: list[dict]) -> dict[str, float]:
    """Milliseconds of kernel time by kind, over the whole trace."""
    spent: Counter = Counter()
    for e in events:
        if e.get("cat") == "kernel":
            spent[kind_of(e["name"])] += e["dur"] / 1e3
    return dict(spent.most_common())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("traces", nargs="+", type=Path, help="trace files, or folders to search for trace.json.gz")
    p.add_argument("--top", type=int, default=25, help="how many kernels to list")
    args = p.parse_args()
    for path in [t for a in args.traces for t in (sorted(a.rglob("trace.json*")) if a.is_dir() else [a])]:
        events = timeline.read_trace(path)
        spent = kinds(events)
        total = sum(spent.values())
        print(f"{path}: {sum(e.get('cat') == 'kernel' for e in events)} kernels, {total:.2f} ms of kernel time")
        for kind, ms in spent.items():
            print(f"  {kind:24s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
        print(timeline.top_kernels(events, n=args.top).to_string(float_format=lambda v: f"{v:,.3f}"))


if __name__ == "__main__":
    main()
