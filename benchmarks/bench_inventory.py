"""Scan speed of ``corridor inventory scan`` on a large real tree.

Default tree: the site-packages of the interpreter running this script (the project's
own venv: thousands of Python files, certificate bundles, C headers). Prints the files
read, the bytes read, files per second and MB per second over the whole walk (files
of no cryptographic kind are listed but not read, and do not count as scanned), the
findings and skips, and the split of the time per scanner kind.

    PYTHONPATH=src python benchmarks/bench_inventory.py [TREE] [--repeat N]
"""

from __future__ import annotations

import argparse
import site
import sys
import time
from collections import Counter
from pathlib import Path

from corridor.inventory.scan import ScanOptions, file_kind, scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", nargs="?", default=site.getsitepackages()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tree = Path(args.tree)
    kinds: Counter[str] = Counter()
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            kinds[file_kind(path) or "other"] += 1
    print(f"tree: {tree}")
    print(f"python {sys.version.split()[0]}; files by kind: {dict(kinds.most_common())}")
    best = None
    for run in range(args.repeat):
        started = time.perf_counter()
        result = scan([str(tree)], ScanOptions())
        elapsed = time.perf_counter() - started
        print(f"run {run + 1}: {result.files_scanned} files, "
              f"{result.bytes_scanned / 1e6:.1f} MB in {elapsed:.2f} s: "
              f"{result.files_scanned / elapsed:,.0f} files/s, "
              f"{result.bytes_scanned / 1e6 / elapsed:.1f} MB/s; "
              f"{len(result.findings)} findings, {len(result.skipped)} skipped")
        if best is None or elapsed < best[0]:
            best = (elapsed, result)
    assert best is not None
    elapsed, result = best
    algorithms = Counter(f.algorithm for f in result.findings)
    sized = sum(f.key_size_bits is not None for f in result.findings)
    print(f"best: {result.files_scanned / elapsed:,.0f} files/s, "
          f"{result.bytes_scanned / 1e6 / elapsed:.1f} MB/s")
    print(f"findings with a key size: {sized} of {len(result.findings)}")
    print(f"top algorithms: {dict(algorithms.most_common(12))}")
    reasons = Counter(s.reason.split(" (")[0].split(":")[0] for s in result.skipped)
    print(f"skip reasons: {dict(reasons.most_common(8))}")


if __name__ == "__main__":
    main()
