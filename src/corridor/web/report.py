"""The pilot report: the KPIs of :mod:`corridor.web.kpis` as one HTML page with plots
and the decision table a procurement team asks for.

This module owns the targets the decision table judges against (:data:`TARGETS`, the
defaults stated in docs/pilot.md; ``targets=`` overrides them), the plots (matplotlib,
embedded as PNG data URIs so the page is one self-contained file that opens without
internet), and the page itself. Every figure on the page names the counts it came from.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from corridor.web.kpis import PilotKpis


@dataclass(frozen=True)
class Target:
    """One line of the decision table: what is measured, the bar, which way is better."""

    kpi: str
    label: str
    value: float
    higher_is_better: bool
    unit: str


#: Default targets (docs/pilot.md says why each).
TARGETS: dict[str, Target] = {t.kpi: t for t in (
    Target("qkd_key_availability", "QKD key availability", 0.99, True, "share"),
    Target("time_to_key_p99_s", "time-to-key p99 (both SAEs hold the key)", 1.0, False, "s"),
    Target("fallback_rate", "fallback rate (worst policy)", 0.01, False, "share"),
    Target("link_uptime", "link uptime (worst link)", 0.99, True, "share"),
    Target("alarms_per_day", "alarms per day", 5.0, False, "per day"),
    Target("keys_delivered_per_day", "keys delivered per day", 1000.0, True, "per day"),
)}


def measured(kpis: PilotKpis) -> dict[str, float | None]:
    """The figure each target is judged on (None: nothing recorded to judge)."""
    fallback = [r for r in kpis.fallback_rate_by_policy.values() if r is not None]
    uptime = [v["uptime"] for v in kpis.links.values() if v["uptime"] is not None]
    return {"qkd_key_availability": kpis.qkd_key_availability,
            "time_to_key_p99_s": kpis.time_to_key_p99_s,
            "fallback_rate": max(fallback) if fallback else None,
            "link_uptime": min(uptime) if uptime else None,
            "alarms_per_day": kpis.alarms_per_day,
            "keys_delivered_per_day": kpis.keys_delivered_per_day}


def decision_table(kpis: PilotKpis, targets: Mapping[str, Target] | None = None
                   ) -> list[dict[str, Any]]:
    """One row per target: measured value, met / not met / not measured, the evidence."""
    targets = TARGETS if targets is None else targets
    values = measured(kpis)
    evidence = {
        "qkd_key_availability": f"{kpis.requests_served} enc_keys requests served, "
        f"{kpis.requests_refused_no_key} refused with 503",
        "time_to_key_p99_s": f"{len(kpis.time_to_key_s)} keys delivered at both ends",
        "fallback_rate": ", ".join(f"{p}: {c}" for p, c in kpis.hybrid_decisions.items())
        or "no hybrid decisions",
        "link_uptime": ", ".join(f"{k}: {v['quarantined_s']:.0f} s quarantined"
                                 for k, v in kpis.links.items()) or "no links",
        "alarms_per_day": f"{kpis.alarms} alarms in {kpis.period_s:.0f} s",
        "keys_delivered_per_day": f"{kpis.keys_delivered} keys in {kpis.period_s:.0f} s",
    }
    rows = []
    for kpi, target in targets.items():
        value = values.get(kpi)
        if value is None:
            verdict = "not measured"
        elif target.higher_is_better:
            verdict = "met" if value >= target.value else "not met"
        else:
            verdict = "met" if value <= target.value else "not met"
        rows.append({"kpi": kpi, "label": target.label, "unit": target.unit,
                     "target": (">= " if target.higher_is_better else "<= ")
                     + _num(target.value, target.unit),
                     "measured": None if value is None else value,
                     "measured_text": "-" if value is None else _num(value, target.unit),
                     "verdict": verdict, "evidence": evidence.get(kpi, "")})
    return rows


def _num(value: float, unit: str) -> str:
    if unit == "share":
        return f"{value * 100:.2f} %"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f} {unit}"


def _png(draw: Callable[[Any], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(kpis: PilotKpis) -> list[tuple[str, str]]:
    """(caption, PNG data URI) for each plot that has data."""
    import datetime as dt

    out = []
    series = {k: v["qber_series"] for k, v in kpis.links.items() if v["qber_series"]}
    if series:
        def qber(ax: Any) -> None:
            for link_id, points in series.items():
                ax.plot([dt.datetime.fromisoformat(t) for t, _ in points],
                        [q * 100 for _, q in points], ".", markersize=2, label=link_id)
            ax.set_ylabel("QBER (%)")
            ax.set_title("QBER of every block, per link")
            ax.legend(loc="upper right", fontsize="small")
            ax.tick_params(axis="x", labelrotation=20, labelsize="small")
        out.append(("QBER of every distilled block (from link_block audit entries)",
                    _png(qber)))
    if kpis.time_to_key_s:
        def ttk(ax: Any) -> None:
            ax.hist([t * 1000 for t in kpis.time_to_key_s], bins=40)
            for q, value in (("p50", kpis.time_to_key_p50_s), ("p99", kpis.time_to_key_p99_s)):
                if value is not None:
                    ax.axvline(value * 1000, linestyle="--", color="black")
                    ax.text(value * 1000, ax.get_ylim()[1] * 0.9, f" {q}", fontsize="small")
            ax.set_xlabel("time-to-key (ms)")
            ax.set_ylabel("keys")
            ax.set_title("Time until both SAEs hold a key")
        out.append((f"Time-to-key of {len(kpis.time_to_key_s)} keys (master delivery to "
                    "slave delivery of the same key ID)", _png(ttk)))
    if kpis.hybrid_decisions:
        def decisions(ax: Any) -> None:
            policies = list(kpis.hybrid_decisions)
            bottom = [0] * len(policies)
            for outcome in ("established", "degraded", "refused"):
                counts = [kpis.hybrid_decisions[p].get(outcome, 0) for p in policies]
                ax.bar(policies, counts, bottom=bottom, label=outcome)
                bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
            ax.set_ylabel("decisions")
            ax.set_title("Hybrid decisions by policy and outcome")
            ax.legend(fontsize="small")
        out.append(("Hybrid session decisions (fallback = degraded)", _png(decisions)))
    return out


def report_html(kpis: PilotKpis, targets: Mapping[str, Target] | None = None) -> str:
    """The whole report as one self-contained HTML page."""
    esc = html.escape
    rows = decision_table(kpis, targets)
    table = "".join(
        f"<tr><td>{esc(r['label'])}</td><td>{esc(r['target'])}</td>"
        f"<td>{esc(r['measured_text'])}</td>"
        f"<td class='{r['verdict'].replace(' ', '-')}'>{esc(r['verdict'])}</td>"
        f"<td>{esc(r['evidence'])}</td></tr>" for r in rows)
    sources = "".join(
        f"<li>{esc(s.what)}: <code>{esc(s.path)}</code>, {s.entries} entries, "
        f"{'chain intact' if s.ok else 'BROKEN: ' + esc(str(s.reason))}</li>"
        for s in kpis.sources)
    links = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(str(v['blocks']))}</td>"
        f"<td>{v['quarantined_s']:.0f} s</td><td>"
        f"{'-' if v['uptime'] is None else _num(v['uptime'], 'share')}</td></tr>"
        for k, v in kpis.links.items())
    risk = ""
    if kpis.risk_before is not None or kpis.risk_after is not None:
        def cell(summary: dict[str, Any] | None) -> str:
            if summary is None:
                return "-"
            return esc(", ".join(f"{k}: {v}" for k, v in summary["by_risk"].items()))
        risk = ("<h2>Key-exchange risk (inventory)</h2><table><tr><th>before</th>"
                f"<th>after</th></tr><tr><td>{cell(kpis.risk_before)}</td>"
                f"<td>{cell(kpis.risk_after)}</td></tr></table>")
    figures = "".join(f"<figure><img src='{uri}' alt='{esc(caption)}'>"
                      f"<figcaption>{esc(caption)}</figcaption></figure>"
                      for caption, uri in plots(kpis))
    problems = "".join(f"<li>{esc(p)}</li>" for p in kpis.problems)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Pilot report: {esc(kpis.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #bbb; padding: 0.3rem 0.6rem; text-align: left; }}
.met {{ background: #d9f2d9; }} .not-met {{ background: #f8d4d4; }}
.not-measured {{ background: #eee; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Pilot report: {esc(kpis.name)}</h1>
<p>Period {esc(kpis.start)} to {esc(kpis.end)} ({kpis.period_s:,.0f} s). Every figure
is computed from the audit entries below that verified; chains
{'all intact' if kpis.chains_ok else '<strong>NOT all intact</strong>'}.</p>
<h2>Decision table</h2>
<table><tr><th>KPI</th><th>target</th><th>measured</th><th>verdict</th>
<th>evidence</th></tr>{table}</table>
<h2>Figures</h2>
<ul>
<li>QKD key availability: {esc(_opt(kpis.qkd_key_availability, 'share'))}
({kpis.requests_served} served, {kpis.requests_refused_no_key} refused for lack of key);
hybrid decisions with a QKD input: {esc(_opt(kpis.hybrid_with_qkd_share, 'share'))}</li>
<li>Time-to-key p50 {esc(_opt(kpis.time_to_key_p50_s, 's'))}, p99
{esc(_opt(kpis.time_to_key_p99_s, 's'))}; the master KME's own step (reservation to
delivery) p50 {esc(_opt(kpis.master_step_p50_s, 's'))}, p99
{esc(_opt(kpis.master_step_p99_s, 's'))}</li>
<li>Fallback rate by policy: {esc(', '.join(f'{p}: {_opt(r, "share")}'
    for p, r in kpis.fallback_rate_by_policy.items()) or '-')}</li>
<li>Keys delivered: {kpis.keys_delivered} ({esc(_opt(kpis.keys_delivered_per_day,
    'per day'))}); by day: {esc(str(kpis.keys_by_day))}</li>
<li>Alarms: {kpis.alarms} ({esc(_opt(kpis.alarms_per_day, 'per day'))}); by day:
{esc(str(kpis.alarms_by_day))}</li>
</ul>
<h2>Links</h2>
<table><tr><th>link</th><th>blocks</th><th>quarantined</th><th>uptime</th></tr>{links}
</table>
{risk}
{figures}
<h2>Sources</h2><ul>{sources}</ul>
{'<h2>Problems</h2><ul>' + problems + '</ul>' if problems else ''}
</body></html>
"""


def _opt(value: float | None, unit: str) -> str:
    return "-" if value is None else _num(value, unit)


__all__ = ["TARGETS", "Target", "decision_table", "measured", "plots", "report_html"]
