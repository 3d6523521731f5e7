"""Time ``corridor net plan`` on the generated regional network (target: 1,000 sites in
under 10 s on one core, issue 10).

Generates the network (``corridor net generate --sites N --seed S``, not timed), then
runs, pinned to one core with ``taskset -c 0`` when it exists:

1. the whole command, ``python -m corridor net plan FILE --format json``, in a fresh
   interpreter: wall time and CPU time (user + system of the child), imports included;
2. the same steps in one fresh interpreter with a clock around each: importing the
   planner, reading and validating the file (``load_network``), planning (``plan``).

Prints one JSON object with the figures, the date, the load average before and after
and the command lines, so that docs/benchmarks.md can quote them as they are.

    .venv/bin/python benchmarks/bench_net_plan.py [--sites 1000] [--seed 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PHASES = """
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
from corridor.net.plan import plan
from corridor.net.topology import load_network
t1 = time.perf_counter(); c1 = time.process_time()
network = load_network(sys.argv[1])
t2 = time.perf_counter(); c2 = time.process_time()
result = plan(network)
t3 = time.perf_counter(); c3 = time.process_time()
print(json.dumps({"import_s": [t1 - t0, c1 - c0], "load_s": [t2 - t1, c2 - c1],
                  "plan_s": [t3 - t2, c3 - c2], "lp_solves": result.lp_solves,
                  "links": len(network.links), "pairs": len(network.demand),
                  "unmet_bits_per_s": result.unmet_bits_per_s,
                  "demand_bits_per_s": result.demand_bits_per_s,
                  "bottlenecks": len(result.bottlenecks())}))
"""


def pinned(command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", "0", *command] if taskset else command


def run_child(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    with tempfile.TemporaryDirectory() as tmp:
        network = Path(tmp) / f"regional-{args.sites}.toml"
        subprocess.run([sys.executable, "-m", "corridor", "net", "generate", "--sites",
                        str(args.sites), "--seed", str(args.seed), "--output", str(network)],
                       env=env, check=True, capture_output=True)
        load_before = os.getloadavg()
        command = pinned([sys.executable, "-m", "corridor", "net", "plan", str(network),
                           "--format", "json"])
        whole = [run_child(command, env)[:2] for _ in range(args.repeat)]
        phases = [json.loads(run_child(pinned([sys.executable, "-c", _PHASES, str(network)]),
                                  env)[2]) for _ in range(args.repeat)]
        load_after = os.getloadavg()
    best = min(range(len(whole)), key=lambda i: whole[i][0])
    print(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": f"corridor net generate --sites {args.sites} --seed {args.seed} -o F; "
                   "corridor net plan F --format json",
        "pinned_to_one_core": shutil.which("taskset") is not None,
        "load_average_before": load_before, "load_average_after": load_after,
        "cores": os.cpu_count(),
        "whole_command_wall_s": [round(w, 2) for w, _ in whole],
        "whole_command_cpu_s": [round(c, 2) for _, c in whole],
        "best_wall_s": round(whole[best][0], 2), "best_cpu_s": round(whole[best][1], 2),
        "phases_wall_cpu_s": [{k: [round(x, 2) for x in v] for k, v in p.items()
                               if k in ("import_s", "load_s", "plan_s")} for p in phases],
        "network": {k: phases[0][k] for k in ("links", "pairs", "lp_solves", "bottlenecks",
                                              "unmet_bits_per_s", "demand_bits_per_s")},
    }, indent=2))


if __name__ == "__main__":
    main()
