"""The evidence pack: what auditors and procurement ask of a running or recorded
corridor, answered from its own records.

Sources, all named in ``corridor-up.json``: the KMEs' audit logs and the hybrid
sessions' decision logs (each chain verified with the KME's KEK before a single entry
is counted: only verified entries are evidence), the PKI's certificates, and, for a
running corridor, the KMEs themselves over mutual TLS with an operator certificate
(link states and alarms, ``/metrics``) and TLS handshakes with their listeners. The
key-exchange risk comes from the inventory: "after" is the inventory of the corridor
itself (or a given inventory JSON), "before" an inventory JSON of the estate before
migration when one is given.

Questions answered (one section each): which links are QKD-secured and by what; the
threat model; the fallback path when QKD key is missing and how often it was taken;
how keys are rotated and where that is logged; the audit-chain verification;
certificate expiry; the key-exchange risk before and after.

:func:`evidence_html` renders the pack as one HTML page (the chart embedded);
:func:`evidence_pdf` as a PDF of matplotlib pages (no dependency beyond matplotlib).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.inventory.algorithms import VULNERABILITIES
from corridor.inventory.report import load_assets
from corridor.inventory.risk import LEVELS, RiskPolicy, assess_all
from corridor.inventory.scan import ScanOptions, scan
from corridor.kms.up_file import read_up_file

# One operator connection: (kme_id or None, KME base URL, cert, key, CA).
Connection = tuple[str | None, str, Path, Path, Path]

THREAT_MODEL = (
    "Harvest now, decrypt later: an adversary records key exchanges today and breaks "
    "them with a cryptographically relevant quantum computer (CRQC) within the data's "
    "shelf life (Mosca: x + y > z). Shor breaks RSA, DH and elliptic curves; Grover "
    "halves symmetric strength.",
    "QKD links: keys from BB84 with decoy states; security rests on physics plus an "
    "authenticated classical channel (Wegman-Carter with a pre-shared pool). Eavesdropping "
    "raises the QBER; blocks above the threshold are discarded and the link alarms.",
    "Trusted nodes: a KME holds keys in clear inside its site; relayed keys are only as "
    "safe as each node on the path. Stores are sealed (AES-256-GCM) and every key event "
    "is in an HMAC-chained audit log.",
    "Hybrid sessions combine the QKD key with X-Wing (ML-KEM-768 + X25519) in a KDF: the "
    "session key holds if either input holds. The policy decides what happens when one "
    "input is missing, and every decision is logged.",
    "Classical residue: the KMEs' mutual-TLS certificates are ECDSA P-256 (Shor-broken "
    "signatures: forgery needs a CRQC at the time of the handshake, not later), and a "
    "listener that still accepts X25519 lets a classical client's session be recorded.",
)


@dataclass
class EvidencePack:
    """Everything the report shows, gathered once."""

    name: str
    generated_at: str
    up_file: str
    live: bool
    links: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    rotation: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    risk_before: dict[str, Any] | None = None
    risk_after: dict[str, Any] | None = None
    alarms: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tls: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: v for k, v in self.__dict__.items()}


def _verified_entries(path: Path, kek_file: Path | None, pack: EvidencePack,
                      what: str) -> list[dict[str, Any]]:
    """The entries of an audit log that verify (and a row in ``pack.audits``)."""
    from corridor.kms.audit import verify_audit_log
    from corridor.kms.crypto import load_kek

    entries: list[dict[str, Any]] = []
    row: dict[str, Any] = {"log": str(path), "what": what}
    try:
        if kek_file is None:
            raise ParameterError("kek_file", None, "a KEK file in corridor-up.json")
        kek = load_kek(kek_file)
        result = verify_audit_log(path, kek, on_entry=entries.append)
        del kek
    except ParameterError as exc:
        row.update(ok=False, entries=0, reason=str(exc))
        pack.audits.append(row)
        pack.problems.append(f"audit log {path} not verified: {exc}")
        return []
    row.update(ok=result.ok, entries=result.entries, reason=result.reason,
               warnings=list(result.warnings))
    pack.audits.append(row)
    if not result.ok:
        pack.problems.append(f"audit log {path} BROKEN at seq {result.first_bad_seq}: "
                             f"{result.reason}")
    return entries


def _links(data: dict[str, Any], kme_entries: dict[str, list[dict[str, Any]]]
           ) -> list[dict[str, Any]]:
    rows = []
    for link in data.get("links") or []:
        if not isinstance(link, dict):
            continue
        link_id = link.get("link_id")
        outcomes: Counter[str] = Counter()
        qbers = []
        delivered = 0
        stored_blocks = stored_bytes = dropped_halves = 0
        # Link events are written at both ends: count them at Alice's KME only. A block
        # the monitor accepted is stored only where its pools have room: block_ingested
        # says what was kept, link_feed_dropped each half kept by neither end.
        for entry in kme_entries.get(str(link.get("alice_kme")), []):
            fields = entry.get("fields") or {}
            if fields.get("link_id") != link_id:
                continue
            event = entry.get("event")
            if event == "link_block":
                outcomes[str(fields.get("outcome"))] += 1
                if isinstance(fields.get("qber"), int | float):
                    qbers.append(float(fields["qber"]))
            elif event == "block_ingested" and int(fields.get("accepted_bytes") or 0) > 0:
                stored_blocks += 1
                stored_bytes += int(fields["accepted_bytes"])
            elif event == "link_feed_dropped":
                dropped_halves += 1
        for kme_id in (link.get("alice_kme"), link.get("bob_kme")):
            for entry in kme_entries.get(str(kme_id), []):
                fields = entry.get("fields") or {}
                if entry.get("event") == "keys_delivered" and fields.get("role") == "master":
                    delivered += int(fields.get("count") or 0)
        rows.append({"link_id": link_id, "ends": f"{link.get('alice_kme')} <-> "
                     f"{link.get('bob_kme')}", "source": link.get("source"),
                     "by": f"BB84 decoy-state, {link.get('preset')} preset, "
                     f"{link.get('length_km')} km fibre; Wegman-Carter authenticated "
                     "classical channel",
                     "blocks": dict(outcomes), "blocks_stored": stored_blocks,
                     "key_bits_stored": 8 * stored_bytes,
                     "halves_dropped_full": dropped_halves,
                     "mean_qber": (sum(qbers) / len(qbers))
                     if qbers else None, "keys_delivered": delivered})
    return rows


def _sessions(data: dict[str, Any], base: Path, pack: EvidencePack) -> None:
    for session in data.get("hybrid_sessions") or []:
        if not isinstance(session, dict):
            continue
        pair = f"{session.get('initiator_sae_id')}->{session.get('responder_sae_id')}"
        outcomes: Counter[str] = Counter()
        inputs: Counter[str] = Counter()
        generations: set[Any] = set()
        qkd_missing: Counter[str] = Counter()
        logs = []
        for side in session.get("sides") or []:
            if not isinstance(side, dict) or not isinstance(side.get("audit_log"), str):
                continue
            log = base / side["audit_log"]
            kek = base / side["kek_file"] if isinstance(side.get("kek_file"), str) else None
            logs.append(str(log))
            if not log.is_file():
                pack.problems.append(f"hybrid audit log {log} missing")
                continue
            initiator = side.get("role") == "initiator"
            label = f"hybrid decisions {pair}" + ("" if initiator else f" ({side.get('role')})")
            entries = _verified_entries(log, kek, pack, label)   # every side's chain
            if not initiator:
                continue   # each decision is counted once, at the initiator
            for entry in entries:
                fields = entry.get("fields") or {}
                if entry.get("event") != "hybrid_decision":
                    continue
                outcomes[str(fields.get("outcome"))] += 1
                inputs[str(fields.get("inputs"))] += 1
                for missing in fields.get("missing") or []:
                    if isinstance(missing, str) and missing.startswith("qkd:"):
                        qkd_missing[missing.removeprefix("qkd:")] += 1
                if fields.get("outcome") != "refused":
                    generations.add(fields.get("generation"))
        total = sum(outcomes.values())
        pack.sessions.append({
            "pair": pair, "policy": session.get("policy"), "decisions": total,
            "outcomes": dict(outcomes), "inputs": dict(inputs),
            "qkd_missing": sum(qkd_missing.values()), "qkd_missing_reasons": dict(qkd_missing),
            "fallback_taken": outcomes.get("degraded", 0),
            "refused": outcomes.get("refused", 0),
            "fallback_rate": (outcomes.get("degraded", 0) / total) if total else None,
            "fallback_path": _fallback(str(session.get("policy")))})
        pack.rotation.append({
            "what": f"hybrid session {pair}", "rule": f"re-key after "
            f"{session.get('rekey_after_bytes') or 'unlimited'} bytes or "
            f"{session.get('rekey_after_s') or 'unlimited'} s",
            "generations_established": len(generations), "logged_in": logs})


def _fallback(policy: str) -> str:
    return {
        "both-required": "none: without QKD key (or X-Wing) the session is refused and "
                         "keeps no traffic key (fail closed)",
        "qkd-required": "none: without QKD key the session is refused",
        "pqc-required": "X-Wing alone when QKD key is missing (degraded, logged)",
        "any": "X-Wing alone when QKD key is missing, QKD alone when ML-KEM fails "
               "(degraded, logged)",
    }.get(policy, f"policy {policy}")


def _certificates(assets: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    rows = {}
    for asset in assets:
        if not asset.get("not_after"):
            continue
        expiry = dt.datetime.fromisoformat(str(asset["not_after"]).replace("Z", "+00:00"))
        where = f"{asset['location']}:{asset['line']}" if asset.get("line") is not None \
            else f"{asset['location']}#{asset.get('field')}"
        rows[where] = {"where": where, "subject": str(asset.get("detail", "")).split(";")[0],
                       "algorithm": f"{asset['algorithm']} {asset.get('curve') or ''}".strip()
                       + (f" {asset['key_size_bits']}" if not asset.get("curve")
                          and asset.get("key_size_bits") else ""),
                       "not_after": asset["not_after"],
                       "days_left": (expiry - now).days}
    return sorted(rows.values(), key=lambda r: r["days_left"])


def key_exchange_risk(assets: list[dict[str, Any]]) -> dict[str, Any]:
    """Key-exchange assets by risk level and by vulnerability."""
    chosen = [a for a in assets if a.get("usage") == "key-exchange"
              or a.get("primitive") in ("key-agree", "kem")]
    return {"assets": len(chosen),
            "by_risk": {level: sum(a.get("level") == level for a in chosen)
                        for level in LEVELS},
            "by_vulnerability": {v: sum(a.get("vulnerability") == v for a in chosen)
                                 for v in VULNERABILITIES},
            "max_score": max((float(a.get("score", 0)) for a in chosen), default=0.0)}


def metric_totals(text: str) -> dict[str, float]:
    """Each ``corridor_`` series of a Prometheus text page summed over its labels, less
    the ones whose sum means nothing: ``_created`` (creation times, Unix seconds) and
    ``_bucket`` (cumulative histogram buckets)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("corridor_") or " " not in line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith(("_created", "_bucket")):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


def _live(pack: EvidencePack, connections: list[Connection]) -> None:
    import httpx

    from corridor.kms.client import OperatorClient
    from corridor.kms.tls import client_ssl_context

    answered = 0
    for kme_id, url, cert, key, ca in connections:
        try:
            with OperatorClient(url, cert, key, ca, expected_kme_id=kme_id) as client:
                answer = client.alarms()
            answered += 1
            for link in answer.get("links", []):
                pack.alarms.append({"kme_id": answer.get("kme_id"),
                                    "link_id": link.get("link_id"),
                                    "state": link.get("state"),
                                    "alarms": [f"{a.get('kind')}:{a.get('reason')}"
                                               for a in link.get("alarms", [])]})
            context = client_ssl_context(cert, key, ca)
            with httpx.Client(verify=context, timeout=10.0) as http:
                text = http.get(url.rstrip("/") + "/metrics").text
            for name, value in metric_totals(text).items():
                pack.metrics[name] = pack.metrics.get(name, 0.0) + value
        except Exception as exc:  # a KME that does not answer is a finding, not a crash
            pack.problems.append(f"KME {kme_id or url} did not answer the operator: "
                                 f"{type(exc).__name__}")
    if connections and not answered:
        # Evidence of a running corridor from a corridor that is not running would be
        # the recorded files presented as live: refuse, and say what to run instead.
        raise ParameterError("--from-up", pack.up_file,
                             "a running corridor; none of its KMEs answered the operator",
                             "stopped? then give the file instead: corridor evidence FILE")


def collect_evidence(up_file: Path, *, connections: list[Connection] | None = None,
                     before: Path | None = None, after: Path | None = None,
                     policy: RiskPolicy | None = None, timeout_s: float = 5.0
                     ) -> EvidencePack:
    """Gather the pack from ``up_file`` (and the running KMEs when ``connections``)."""
    data = read_up_file(up_file, "FILE", need_kmes=True)
    base = up_file.parent
    now = dt.datetime.now(dt.UTC)
    pack = EvidencePack(name=str(data.get("name", "corridor")),
                        generated_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
                        up_file=str(up_file), live=connections is not None)
    kme_entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kme in data["kmes"]:
        if not isinstance(kme, dict) or not isinstance(kme.get("audit_log"), str):
            continue
        kek = base / kme["kek_file"] if isinstance(kme.get("kek_file"), str) else None
        log = base / kme["audit_log"]
        if not log.is_file():
            pack.problems.append(f"KME {kme.get('kme_id')} audit log {log} missing")
            continue
        kme_entries[str(kme.get("kme_id"))] = _verified_entries(
            log, kek, pack, f"KME {kme.get('kme_id')}")
    pack.links = _links(data, kme_entries)
    _sessions(data, base, pack)
    stream = data.get("rsu_stream")
    if isinstance(stream, dict):
        pack.rotation.append({"what": f"V2X PSK stream {stream.get('centre_sae_id')}->"
                              f"{stream.get('rsu_sae_id')}", "rule": "new QKD key as PSK "
                              f"every {stream.get('psk_rotation_s')} s",
                              "generations_established": None,
                              "logged_in": ["KME audit logs (keys_delivered)"]})
    for kme_id, entries in kme_entries.items():
        delivered = sum(int((e.get("fields") or {}).get("count") or 0) for e in entries
                        if e.get("event") == "keys_delivered")
        pack.rotation.append({"what": f"keys delivered by {kme_id}", "rule": "every key "
                              "used once, then zeroised", "generations_established": delivered,
                              "logged_in": [str(base / next(
                                  k["audit_log"] for k in data["kmes"]
                                  if isinstance(k, dict) and k.get("kme_id") == kme_id))]})
    policy = policy or RiskPolicy()
    if after is not None:
        after_assets = load_assets(after)
    else:
        targets = [str(up_file)] + ([str(base / "pki")] if (base / "pki").is_dir() else [])
        result = scan(targets, ScanOptions(live=connections is not None, timeout_s=timeout_s))
        after_assets = [a.to_dict() for a in assess_all(result.findings, policy)]
        for skip in result.skipped:
            pack.problems.append(f"inventory skipped {skip.location}: {skip.reason}")
    pack.risk_after = key_exchange_risk(after_assets)
    pack.tls = [{"where": f"{a['location']}#{a.get('field')}", "algorithm": a["algorithm"],
                 "detail": a.get("detail")} for a in after_assets
                if a.get("category") == "tls" and a.get("field") == "groups"]
    if before is not None:
        pack.risk_before = key_exchange_risk(load_assets(before))
    pack.certificates = _certificates(after_assets, now)
    if connections is not None:
        _live(pack, connections)
    return pack


# ------------------------------------------------------------------ rendering
def sections(pack: EvidencePack) -> list[tuple[str, list[str]]]:
    """The report as (heading, lines of plain text): one source for HTML and PDF."""
    out: list[tuple[str, list[str]]] = []
    lines = [f"{link['link_id']} ({link['ends']}, {link['source']}): {link['by']}. "
             f"Blocks judged: {link['blocks'] or 'none recorded'}; stored: "
             f"{link['blocks_stored']} ({link['key_bits_stored']:,} key bits); halves "
             f"dropped for full pools: {link['halves_dropped_full']}; mean QBER "
             + (f"{link['mean_qber']:.4f}" if link["mean_qber"] is not None else "-")
             + f"; keys delivered: {link['keys_delivered']}" for link in pack.links]
    lines += [f"live: {a['kme_id']} {a['link_id']} state {a['state']}, alarms "
              f"{', '.join(a['alarms']) or 'none'}" for a in pack.alarms]
    out.append(("Which links are QKD-secured, and by what", lines or ["no QKD link"]))
    out.append(("Threat model", list(THREAT_MODEL)))
    lines = [f"{s['pair']}: policy {s['policy']}; fallback path: {s['fallback_path']}. "
             f"{s['decisions']} decisions {s['outcomes']}; QKD key missing in "
             f"{s['qkd_missing']} ({s['qkd_missing_reasons'] or 'never'}); fallback taken "
             f"{s['fallback_taken']} times"
             + (f" ({100 * s['fallback_rate']:.1f} %)" if s["fallback_rate"] is not None else "")
             + f"; refused {s['refused']}; inputs {s['inputs']}" for s in pack.sessions]
    out.append(("Fallback when quantum hardware fails, and how often it was taken",
                lines or ["no hybrid session recorded"]))
    lines = [f"{r['what']}: {r['rule']}; "
             + (f"{r['generations_established']} so far; " if r["generations_established"]
                is not None else "") + f"logged in {', '.join(r['logged_in'])}"
             for r in pack.rotation]
    out.append(("How keys are rotated, and where that is logged", lines))
    lines = [f"{a['log']} ({a['what']}): " + ("intact, " if a["ok"] else "NOT VERIFIED, ")
             + f"{a['entries']} entries verify" + (f"; {a['reason']}" if a.get("reason")
                                                   else "") for a in pack.audits]
    out.append(("Audit-chain verification", lines or ["no audit log found"]))
    lines = [f"{c['where']}: {c['subject']}, {c['algorithm']}, expires "
             f"{c['not_after'][:10]} ({c['days_left']} days)" for c in pack.certificates]
    out.append(("Certificate expiry", lines or ["no certificate found"]))
    lines = []
    for label, risk in (("before", pack.risk_before), ("after", pack.risk_after)):
        if risk is None:
            lines.append(f"{label}: no inventory given (run `corridor inventory scan ... "
                         "--format json --out FILE` on the estate before migration and pass "
                         "it with --before)")
        else:
            lines.append(f"{label}: {risk['assets']} key-exchange assets, by risk "
                         f"{risk['by_risk']}, by vulnerability {risk['by_vulnerability']}, "
                         f"highest score {risk['max_score']:g}")
    lines += [f"TLS handshake: {t['where']} {t['detail']}" for t in pack.tls]
    out.append(("Key-exchange risk before and after", lines))
    if pack.metrics:
        keep = sorted((k, v) for k, v in pack.metrics.items()
                      if any(w in k for w in ("delivered", "blocks", "alarms", "rejected",
                                              "handshakes", "decisions")))
        out.append(("KME metrics (live)", [f"{k} = {v:g}" for k, v in keep]))
    if pack.problems:
        out.append(("Problems found while gathering this evidence", pack.problems))
    return out


def _chart_png(pack: EvidencePack) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    series = [("before", pack.risk_before), ("after", pack.risk_after)]
    shown = [(label, risk) for label, risk in series if risk is not None]
    width = 0.8 / max(1, len(shown))
    for index, (label, risk) in enumerate(shown):
        assert risk is not None
        axes[0].bar([i + index * width for i in range(len(LEVELS))],
                    [risk["by_risk"][level] for level in LEVELS], width, label=label)
    axes[0].set_xticks([i + width * (len(shown) - 1) / 2 for i in range(len(LEVELS))],
                       LEVELS)
    axes[0].set_title("key-exchange assets by risk")
    axes[0].legend()
    outcomes: Counter[str] = Counter()
    for session in pack.sessions:
        outcomes.update(session["outcomes"])
    names = ["established", "degraded", "refused"]
    axes[1].bar(names, [outcomes.get(n, 0) for n in names],
                color=["#2a2", "#d80", "#c22"])
    axes[1].set_title("hybrid decisions (fallback = degraded)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def evidence_html(pack: EvidencePack) -> str:
    """The pack as one standalone HTML page."""
    e = html.escape
    chart = base64.b64encode(_chart_png(pack)).decode()
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>Evidence pack: {e(pack.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:62em;margin:2em auto}"
             "li{margin:.3em 0}</style></head><body>",
             f"<h1>Evidence pack: {e(pack.name)}</h1>",
             f"<p>Generated {e(pack.generated_at)} from {e(pack.up_file)} "
             f"({'running corridor, KMEs asked' if pack.live else 'recorded corridor'}).</p>",
             f"<img alt='key-exchange risk and hybrid decisions' "
             f"src='data:image/png;base64,{chart}'>"]
    for heading, lines in sections(pack):
        parts.append(f"<h2>{e(heading)}</h2><ul>")
        parts += [f"<li>{e(line)}</li>" for line in lines]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def evidence_pdf(pack: EvidencePack, path: Path) -> int:
    """Write the pack as a PDF (A4 pages of text, then the chart); the page count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    rows: list[tuple[str, str]] = [("title", f"Evidence pack: {pack.name}"),
                                   ("text", f"Generated {pack.generated_at} from "
                                    f"{pack.up_file}")]
    for heading, lines in sections(pack):
        rows.append(("heading", heading))
        for line in lines:
            for index, piece in enumerate(textwrap.wrap(line, 105) or [""]):
                rows.append(("text", ("- " if index == 0 else "  ") + piece))
    per_page = 52
    pages = 0
    with PdfPages(path) as pdf:
        for start in range(0, len(rows), per_page):
            figure = plt.figure(figsize=(8.27, 11.69))
            y = 0.96
            for kind, text in rows[start:start + per_page]:
                size = {"title": 15, "heading": 11.5}.get(kind, 8)
                weight = "normal" if kind == "text" else "bold"
                figure.text(0.06, y, text, fontsize=size, weight=weight, family="sans-serif",
                            va="top")
                y -= 0.018 if kind == "text" else 0.026
            pdf.savefig(figure)
            plt.close(figure)
            pages += 1
        figure = plt.figure(figsize=(8.27, 11.69))
        axis = figure.add_axes((0.05, 0.55, 0.9, 0.4))
        axis.imshow(mpimg.imread(io.BytesIO(_chart_png(pack)), format="png"))
        axis.axis("off")
        pdf.savefig(figure)
        plt.close(figure)
        pages += 1
    return pages
