"""``corridor hybrid entropy check``: health-test a QRNG before feeding keys from it.

Reads ``--bytes`` raw bytes from the QRNG (an ``https://`` endpoint or a device/FIFO/
file path; docs/entropy.md), runs the NIST SP 800-90B section 4.4 Repetition Count and
Adaptive Proportion tests over them as one continuous stream, and prints the verdict,
the cutoffs with the inputs they come from, and the counts, so that a reader can
recompute both. After a failure the tests restart on the next sample and go on, so
that the report counts every failure (up to 1000, then reading stops). The random
bytes themselves are never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from corridor.cli.common import (
    OutputFormat,
    as_options,
    console,
    emit_json,
    handle_errors,
    parse_count,
    refuse_typed,
)
from corridor.entropy.health import APT_WINDOW_NON_BINARY, HealthFailure, HealthTests
from corridor.entropy.qrng import open_reader
from corridor.entropy.source import DEFAULT_MIN_ENTROPY_BITS_PER_BYTE
from corridor.errors import ParameterError

MAX_CHECK_BYTES = 64 << 20
READ_CHUNK_BYTES = 64 << 10
FAILURES_LISTED = 10
# A stuck source fails every few samples: stop there rather than count a million.
MAX_FAILURES = 1000
FEED_SLICE_BYTES = 4096

entropy_app = typer.Typer(help="QRNG entropy sources: SP 800-90B health checks.",
                          no_args_is_help=True)


def _headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            # the value may be a token: name the field, not the value
            raise ParameterError("--header", "<hidden>", "'Name: value'")
        headers[name.strip()] = content.strip()
    return headers


def run_check(source: str, size_bytes: int, min_entropy_bits_per_byte: float, *,
              ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
              headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """Read ``size_bytes`` from ``source`` and health-test them; the report as a dict."""
    if not APT_WINDOW_NON_BINARY <= size_bytes <= MAX_CHECK_BYTES:
        # Fewer than one APT window would pass a test that never ran.
        raise ParameterError("--bytes", size_bytes, f"an integer in {APT_WINDOW_NON_BINARY}.."
                             f"{MAX_CHECK_BYTES} (at least one APT window)")
    tests = HealthTests(min_entropy_bits_per_byte)
    failures: list[HealthFailure] = []
    reader = open_reader(source, ca=ca, cert=cert, key=key, headers=headers,
                         timeout_s=timeout_s)
    try:
        done = 0
        while done < size_bytes and len(failures) < MAX_FAILURES:
            chunk = memoryview(reader.read(min(READ_CHUNK_BYTES, size_bytes - done)))
            done += len(chunk)
            end = tests.samples_tested + len(chunk)
            # small slices: after each failure the rest of a slice is tested again
            while tests.samples_tested < end and len(failures) < MAX_FAILURES:
                offset = tests.samples_tested - (end - len(chunk))
                failure = tests.feed(chunk[offset:offset + FEED_SLICE_BYTES])
                if failure is not None:
                    failures.append(failure)
    finally:
        reader.close()
    summary = tests.summary()
    return {
        "source": reader.label,
        "verdict": "pass" if not failures else "fail",
        "bytes_read": done,
        "stopped_after_failures": len(failures) >= MAX_FAILURES,
        **summary,
        "alpha": f"2^-{summary['alpha_exponent']}",
        "rct_cutoff_formula": "1 + ceil(alpha_exponent / H)",
        "apt_cutoff_formula": "1 + CRITBINOM(W, 2^-H, 1 - 2^-alpha_exponent)",
        "failures": [{"test": f.test, "sample_index": f.sample_index, "count": f.count,
                      "cutoff": f.cutoff} for f in failures[:FAILURES_LISTED]],
    }


def _print_table(report: dict[str, Any]) -> None:
    verdict = report["verdict"]
    style = "bold green" if verdict == "pass" else "bold red"
    console.print(f"[{style}]{verdict.upper()}[/] {report['source']}: "
                  f"{report['bytes_read']} bytes, SP 800-90B section 4.4 health tests",
                  highlight=False)
    table = Table(show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("how")
    h = report["min_entropy_bits_per_sample"]
    rows = [
        ("claimed min-entropy H", f"{h:g} bits/byte", "--min-entropy"),
        ("alpha", report["alpha"], "SP 800-90B 4.4"),
        ("RCT cutoff C", str(report["rct_cutoff"]), f"1 + ceil({report['alpha_exponent']}/H)"),
        ("APT window W", str(report["apt_window"]), "8-bit samples"),
        ("APT cutoff C", str(report["apt_cutoff"]),
         f"1 + CRITBINOM({report['apt_window']}, 2^-{h:g}, 1 - alpha)"),
        ("samples tested", str(report["samples_tested"]), ""),
        ("APT windows completed", str(report["windows_completed"]), ""),
        ("longest run", str(report["longest_run"]), "RCT fails at >= C"),
        ("highest APT count", str(report["max_window_count"]), "APT fails at >= C"),
        ("RCT failures", str(report["rct_failures"]), ""),
        ("APT failures", str(report["apt_failures"]), ""),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for failure in report["failures"]:
        console.print(f"  {failure['test']} at sample {failure['sample_index']}: count "
                      f"{failure['count']} >= cutoff {failure['cutoff']}", highlight=False)


@entropy_app.command("check")
def check_command(
    source: Annotated[str, typer.Option(
        "--source", help="QRNG: an https:// entropy endpoint, or a device/FIFO/file path.")],
    size_bytes: Annotated[int, typer.Option(
        "--bytes", parser=parse_count, metavar="N",
        help="Bytes to read and test (each byte is one sample).")] = 1 << 20,
    min_entropy: Annotated[float, typer.Option(
        "--min-entropy", help="Claimed min-entropy H per byte (0 < H <= 8); sets cutoffs."
    )] = DEFAULT_MIN_ENTROPY_BITS_PER_BYTE,
    ca: Annotated[Path | None, typer.Option("--ca", help="CA bundle of the endpoint.")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", help="Client certificate (mTLS).")]
        = None,
    key: Annotated[Path | None, typer.Option("--key", help="Client private key (mTLS).")]
        = None,
    header: Annotated[list[str] | None, typer.Option(
        "--header", help="Request header 'Name: value' (an API token); repeatable.")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="HTTP timeout.")] = 10.0,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
        = OutputFormat.table,
) -> None:
    """Read N bytes from a QRNG, run the RCT and APT, print the verdict (exit 1 on fail)."""
    with handle_errors():
        if not source.startswith(("https://", "http://")):
            # A device or file source: the endpoint's options would be ignored (a
            # header's value, an API token, is not shown).
            refuse_typed([("ca", "--ca", str(ca)), ("cert", "--cert", str(cert)),
                          ("key", "--key", str(key)), ("header", "--header", None),
                          ("timeout_s", "--timeout-s", timeout_s)],
                         "only with an https:// --source")
        if (cert is None) != (key is None):
            raise ParameterError("--cert" if key is None else "--key",
                                 str(cert if key is None else key),
                                 "needs --key" if key is None else "needs --cert")
        with as_options({"min_entropy_bits_per_sample": "--min-entropy",
                         "timeout_s": "--timeout-s", "source": "--source",
                         "ca/cert/key": "--ca/--cert/--key"}):
            report = run_check(source, size_bytes, min_entropy, ca=ca, cert=cert, key=key,
                               headers=_headers(header or []), timeout_s=timeout_s)
    if output is OutputFormat.json:
        emit_json(report)
    else:
        _print_table(report)
    if report["verdict"] != "pass":
        raise typer.Exit(1)


def register(hybrid_app: typer.Typer) -> None:
    """Add ``corridor hybrid entropy`` to the hybrid group."""
    hybrid_app.add_typer(entropy_app, name="entropy")

