"""Time ``corridor net simulate`` on 24 h of the city corridor (target: under 60 s on
one core, issue 10).

Runs the whole command, ``python -m corridor net simulate examples/city.toml --hours H
--format json``, in a fresh interpreter pinned to one core (``taskset -c 0`` when it
exists), ``--repeat`` times, and prints one JSON object with the wall and CPU time of
each run (user + system of the child, imports included), the simulation's own clock,
the events processed, the date, the load average before and after and the command
line, so that docs/benchmarks.md can quote them as they are.

    .venv/bin/python benchmarks/bench_net_simulate.py [--hours 24] [--repeat 1]
        [--request-bits N] [--horizon-s S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

# Run as a script from benchmarks/, which is then first on sys.path.
from bench_net_plan import pinned, run_child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--request-bits", type=int, default=None)
    parser.add_argument("--horizon-s", type=float, default=None)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    city = root / "examples" / "city.toml"
    options = ["--hours", f"{args.hours:g}", "--format", "json"]
    if args.request_bits is not None:
        options += ["--request-bits", str(args.request_bits)]
    if args.horizon_s is not None:
        options += ["--horizon-s", f"{args.horizon_s:g}"]
    load_before = os.getloadavg()
    runs = [run_child(pinned([sys.executable, "-m", "corridor", "net", "simulate", str(city),
                          *options]), env) for _ in range(args.repeat)]
    load_after = os.getloadavg()
    data = json.loads(runs[-1][2])
    strategies = data["strategies"]
    print(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "corridor net simulate examples/city.toml " + " ".join(options),
        "pinned_to_one_core": shutil.which("taskset") is not None,
        "load_average_before": load_before, "load_average_after": load_after,
        "cores": os.cpu_count(),
        "whole_command_wall_s": [round(w, 2) for w, _, _ in runs],
        "whole_command_cpu_s": [round(c, 2) for _, c, _ in runs],
        "simulation_wall_s": round(data["elapsed_s"], 2),
        "simulation_cpu_s": round(data["cpu_s"], 2),
        "events": data["events"], "request_bits": data["config"]["request_bits"],
        "blocking": {name: round(s["blocking_probability"], 4)
                     for name, s in strategies.items()},
        "key_consumed_bits": {name: s["key_consumed_bits"] for name, s in strategies.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
