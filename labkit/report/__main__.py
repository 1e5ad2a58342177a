"""``python -m labkit.report``: the HTML pages of a profile (``make report``), or the grading pages (``make grade``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit import results
from labkit.report import grading, pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.report", description=pages.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    parser.add_argument("--out-dir", help="default: reports/<profile>")
    parser.add_argument("--grade", action="store_true", help="the students' hand-ins instead (runs/<profile>/students/)")
    parser.add_argument("--as-run", action="store_true",
                        help="convert the executed notebooks as they are: no re-run of notebook 08 or the comparisons")
    args = parser.parse_args(argv)
    out = Path(args.out_dir) if args.out_dir else None
    if args.grade:
        print(f"grading pages: {grading.grade(args.profile, Path(args.runs_dir), out)}")
    else:
        print(f"reports: {pages.build(args.profile, Path(args.runs_dir), out, rerun=not args.as_run)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
