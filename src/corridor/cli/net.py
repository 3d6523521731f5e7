"""``corridor net``: plan a network of QKD links before buying hardware.

This module owns the ``net`` command group: ``net plan FILE`` (per-link key rates, the
demand routed over them, utilisation, unmet demand, bottlenecks, hybrid decisions;
``--fail``, ``--what-if``, ``--plot``), ``net simulate FILE`` (the discrete-event run of
the key pools, shortest-path against key-aware routing) and ``net generate`` (the
synthetic regional network for scale tests). The work itself lives in
:mod:`corridor.net.plan` and :mod:`corridor.net.simulate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from corridor.cli.common import OutputFormat, console, emit_json, handle_errors, parse_count
from corridor.errors import ParameterError

net_app = typer.Typer(
    name="net",
    help="A whole corridor: plan key rates and demand over many sites, what-if failures.",
    no_args_is_help=True,
)

DEFAULT_TOP = 15


def _bits(value: float) -> str:
    """A rate in bit/s with an SI prefix, 4 significant digits (``2.504M``)."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.4g}{prefix}"
    return f"{value:.4g}"


def _links_table(plan: Any, top: int) -> Table:
    table = Table(title="Links, busiest first (rates in bit/s; -> is alice to bob)",
                  box=box.SIMPLE_HEAD)
    for name, justify in (("link", "left"), ("km", "right"), ("key rate", "right"),
                          ("used ->", "right"), ("used <-", "right"), ("use", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    uses = sorted(plan.links, key=lambda use: (use.failed, -use.utilisation, use.rate.link_id))
    for use in uses[:top]:
        rate = use.rate
        table.add_row(rate.link_id, f"{rate.length_km:g}",
                      _bits(rate.secret_key_rate_bits_per_s),
                      _bits(use.used_forward_bits_per_s), _bits(use.used_backward_bits_per_s),
                      "failed" if use.failed else f"{use.utilisation:.1%}")
    if len(uses) > top:
        table.caption = f"{len(uses) - top} more links: --top N or --format json"
    return table


def _pairs_table(plan: Any, top: int) -> Table:
    table = Table(title="Demand, unmet first (bit/s)", box=box.SIMPLE_HEAD)
    for name, justify in (("master -> slave", "left"), ("prio", "right"),
                          ("demand", "right"), ("served", "right"), ("unmet", "right"),
                          ("status", "left"), ("hops", "right"), ("policy", "left"),
                          ("decision", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    pairs = sorted(plan.pairs, key=lambda p: (-p.unmet_bits_per_s / p.demand.key_rate_bits_per_s,
                                              p.demand.priority, p.demand.master_sae_id,
                                              p.demand.slave_sae_id))
    for pair in pairs[:top]:
        hops = sorted({len(path.links) for path in pair.paths})
        decision = pair.decision
        table.add_row(f"{pair.demand.master_sae_id} -> {pair.demand.slave_sae_id}",
                      str(pair.demand.priority), _bits(pair.demand.key_rate_bits_per_s),
                      _bits(pair.served_bits_per_s), _bits(pair.unmet_bits_per_s), pair.status,
                      ",".join(map(str, hops)) or "-", decision.policy.value,
                      decision.inputs_label if decision.proceed else decision.outcome)
    if len(pairs) > top:
        table.caption = f"{len(pairs) - top} more pairs: --top N or --format json"
    return table


def _what_if_table(items: list[dict[str, Any]], top: int) -> Table:
    table = Table(title="What if one link fails, worst first (bit/s)", box=box.SIMPLE_HEAD)
    for name in ("rank", "failed link", "unmet", "added", "pairs hit", "refused", "PQC-only"):
        table.add_column(name, justify="left" if name == "failed link" else "right")
    for item in items[:top]:
        table.add_row(str(item["rank"]), item["failed_link"], _bits(item["unmet_bits_per_s"]),
                      _bits(item["added_unmet_bits_per_s"]), str(len(item["pairs_hit"])),
                      str(item["pairs_refused"]), str(item["pairs_pqc_only"]))
    if len(items) > top:
        table.caption = f"{len(items) - top} more: --top N or --format json"
    return table


def _print_plan(data: dict[str, Any], plan: Any, top: int,
                what_if_items: list[dict[str, Any]] | None) -> None:
    totals = data["totals"]
    failed = [*data["failed_links"], *data["failed_sites"]]
    console.print(f"[bold]{data['network']}[/]"
                  + (f" with {', '.join(failed)} failed" if failed else ""))
    console.print(f"demand {_bits(totals['demand_bits_per_s'])}, served "
                  f"{_bits(totals['served_bits_per_s'])}, unmet "
                  f"{_bits(totals['unmet_bits_per_s'])}; link key consumed "
                  f"{_bits(totals['key_consumed_bits_per_s'])}", highlight=False)
    levels = ", ".join(f"priority {level['priority']}: {level['served_fraction']:.1%}"
                       for level in data["levels"])
    if levels:
        console.print(f"least served share per priority: {levels}", highlight=False)
    console.print(_links_table(plan, top))
    console.print(_pairs_table(plan, top))
    bottlenecks = data["bottlenecks"]
    console.print(f"bottlenecks ({len(bottlenecks)}): "
                  f"{', '.join(bottlenecks[:top]) or 'none'}"
                  f"{', ...' if len(bottlenecks) > top else ''}", highlight=False)
    pqc = [f"{p['master_sae_id']}->{p['slave_sae_id']}" for p in data["pairs"] if p["pqc_only"]]
    refused = [f"{p['master_sae_id']}->{p['slave_sae_id']}" for p in data["pairs"]
               if p["without_qkd"]["outcome"] == "refused"]
    console.print(f"pairs that would run PQC-only when QKD key runs out ({len(pqc)}): "
                  f"{', '.join(pqc[:top]) or 'none'}", highlight=False)
    console.print(f"pairs whose policy refuses sessions without QKD key ({len(refused)}): "
                  f"{', '.join(refused[:top]) or 'none'}", highlight=False)
    if what_if_items is not None:
        console.print(_what_if_table(what_if_items, top))


@net_app.command("plan")
def plan_command(
    file: Annotated[Path, typer.Argument(help="Corridor TOML with [\\[kmes]], [\\[links]], "
                                         "[\\[saes]], [\\[demand]] and optional [\\[sites]] "
                                         "(docs/network.md).")],
    fail: Annotated[list[str] | None, typer.Option(
        "--fail", help="A link ID or site ID out of service (repeatable).")] = None,
    what_if: Annotated[bool, typer.Option(
        "--what-if", help="Also rank every single-link failure by unmet demand.")] = False,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table or json.")] = OutputFormat.table,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a map (.png, .svg or .pdf): sites at their coordinates, "
        "links coloured by utilisation.")] = None,
    top: Annotated[int, typer.Option(
        "--top", help="Rows per table (the JSON has all).")] = DEFAULT_TOP,
) -> None:
    """Key rate of every link, demand routed over them, what is left unmet."""
    with handle_errors():
        if top < 1:
            raise ParameterError("--top", top, "must be an integer >= 1")
        from corridor.net.plan import plan as make_plan
        from corridor.net.plan import what_if as rank_failures
        from corridor.net.plan import what_if_dict
        from corridor.net.topology import load_network

        network = load_network(file)
        failures = list(fail or [])
        result = make_plan(network, failures)
        data = result.as_dict()
        items = what_if_dict(rank_failures(network, result, failures)) if what_if else None
        if items is not None:
            data["what_if"] = items
        if plot is not None:
            from corridor.net.plot import plot_plan

            data["plot"] = str(plot_plan(network, result, plot))
        if output_format is OutputFormat.json:
            emit_json(data)
            return
        _print_plan(data, result, top, items)
        if plot is not None:
            console.print(f"map written to {plot}", highlight=False)


def _simulation_tables(data: dict[str, Any], top: int) -> list[Table]:
    from corridor.net.simulate import STATES, STRATEGIES

    strategies = data["strategies"]
    summary = Table(title="Routing strategies over the same arrivals", box=box.SIMPLE_HEAD)
    for name in ("strategy", "requests", "blocked", "blocking", "key consumed (bit)"):
        summary.add_column(name, justify="left" if name == "strategy" else "right")
    for name in STRATEGIES:
        result = strategies[name]
        summary.add_row(name, f"{result['offered']:,}", f"{result['blocked']:,}",
                        f"{result['blocking_probability']:.2%}",
                        _bits(result["key_consumed_bits"]))
    pairs = Table(title="Blocking per SAE pair", box=box.SIMPLE_HEAD)
    for name in ("master -> slave", "demand bit/s", "requests",
                 *(f"{s} blocking" for s in STRATEGIES), "key-aware hops"):
        pairs.add_column(name, justify="left" if name == "master -> slave" else "right")
    rows = list(zip(*(strategies[name]["pairs"] for name in STRATEGIES), strict=True))
    rows.sort(key=lambda row: (-max(p["blocking_probability"] for p in row),
                               row[0]["master_sae_id"], row[0]["slave_sae_id"]))
    for row in rows[:top]:
        first = row[0]
        hops = ",".join(f"{h}:{n}" for h, n in row[-1]["served_by_hops"].items()) or "-"
        pairs.add_row(f"{first['master_sae_id']} -> {first['slave_sae_id']}",
                      _bits(first["demand_bits_per_s"]), f"{first['offered']:,}",
                      *(f"{p['blocking_probability']:.2%}" for p in row), hops)
    if len(rows) > top:
        pairs.caption = f"{len(rows) - top} more pairs: --top N or --format json"
    pools = Table(title="Pools, most key given first: share of time " + "/".join(STATES),
                  box=box.SIMPLE_HEAD)
    pools.add_column("pool", justify="left")
    for name in STRATEGIES:
        pools.add_column(f"{name} consumed", justify="right")
        pools.add_column(f"{name} R/W/C/E %", justify="right")
    duration = data["config"]["duration_s"]
    per_pool = list(zip(*(strategies[name]["pools"] for name in STRATEGIES), strict=True))
    per_pool.sort(key=lambda row: (-max(p["consumed_bits"] for p in row), row[0]["pool"]))
    for row in per_pool[:top]:
        cells = []
        for pool in row:
            cells.append(_bits(pool["consumed_bits"]))
            cells.append("/".join(f"{100 * pool['state_s'][s] / duration:.0f}" for s in STATES))
        pools.add_row(row[0]["pool"], *cells)
    if len(per_pool) > top:
        pools.caption = f"{len(per_pool) - top} more pools: --top N or --format json"
    return [summary, pairs, pools]


@net_app.command("simulate")
def simulate_command(
    file: Annotated[Path, typer.Argument(help="Corridor TOML with [\\[kmes]], [\\[links]], "
                                         "[\\[saes]] and [\\[demand]] (docs/network.md).")],
    hours: Annotated[float, typer.Option("--hours", help="Simulated time.")] = 24.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the arrival streams.")] = 1,
    request_bits: Annotated[int | None, typer.Option(
        "--request-bits", parser=parse_count, metavar="N",
        help="Bits per key request (default 262144: 1,024 keys of "
        "256 bits).")] = None,
    pool_bits: Annotated[float | None, typer.Option(
        "--pool-bits", help="Capacity of every pool (default: max_key_count x "
        "key_size_bits of the link's KMEs).")] = None,
    high: Annotated[float | None, typer.Option(
        "--high", help="READY at this share of capacity or more (default 0.5).")] = None,
    low: Annotated[float | None, typer.Option(
        "--low", help="CHARGING below this share of capacity (default 0.1).")] = None,
    horizon_s: Annotated[float | None, typer.Option(
        "--horizon-s", help="Seconds of refill key-aware routing counts as in the pool "
        "(default 1, as kms.routing).")] = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table or json.")] = OutputFormat.table,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write pool levels of the most loaded links and blocking per "
        "pair, both strategies (.png, .svg or .pdf).")] = None,
    top: Annotated[int, typer.Option(
        "--top", help="Rows per table (the JSON has all).")] = DEFAULT_TOP,
) -> None:
    """Pools filling and draining under the demand: shortest-path against key-aware."""
    with handle_errors():
        if top < 1:
            raise ParameterError("--top", top, "must be an integer >= 1")
        from corridor.net.simulate import SimulationConfig, simulate
        from corridor.net.topology import load_network

        given: dict[str, Any] = {"request_bits": request_bits, "pool_bits": pool_bits,
                                 "high_fraction": high, "low_fraction": low,
                                 "horizon_s": horizon_s}
        config = SimulationConfig(hours=hours, seed=seed,
                                  **{k: v for k, v in given.items() if v is not None})
        if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ParameterError("--plot", str(plot), "must end in .png, .svg or .pdf")
        network = load_network(file)
        if console.is_terminal and output_format is OutputFormat.table:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:
                task = bar.add_task(f"simulating {config.hours:g} h", total=config.duration_s)
                result = simulate(network, config,
                                  lambda simulated_s: bar.update(task, completed=simulated_s))
        else:
            result = simulate(network, config)
        data = result.as_dict()
        if plot is not None:
            from corridor.net.simulate_plot import plot_simulation

            data["plot"] = str(plot_simulation(result, plot))
        if output_format is OutputFormat.json:
            emit_json(data)
            return
        console.print(f"[bold]{data['network']}[/]: {config.hours:g} h, seed {config.seed}, "
                      f"requests of {config.request_bits:,} bit, {data['events']:,} events in "
                      f"{data['elapsed_s']:.1f} s", highlight=False)
        for table in _simulation_tables(data, top):
            console.print(table)
        if plot is not None:
            console.print(f"figure written to {plot}", highlight=False)


@net_app.command("generate")
def generate_command(
    sites: Annotated[int, typer.Option("--sites", parser=parse_count, metavar="N",
        help="Number of sites, 30 to 20000.")
                     ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the PCG64 stream.")] = 1,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write (default: stdout).")] = None,
) -> None:
    """A synthetic regional network for scale tests (corridor/net/generate.py)."""
    with handle_errors():
        from corridor.net.generate import generate_regional

        if seed < 0:
            raise ParameterError("--seed", seed, "must be an integer >= 0")
        text = generate_regional(sites, seed)
        if output is None:
            typer.echo(text, nl=False)
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ParameterError("--output", str(output), "must be a writable file path",
                                 type(exc).__name__) from None
        console.print(f"wrote {output} ({sites} sites)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``net`` group to the ``corridor`` application."""
    app.add_typer(net_app)
