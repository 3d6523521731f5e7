"""What ``corridor up`` runs of ``corridor.mobility`` beside its KMEs, and how it shows it.

This module owns the assembly and the live display of:

- an RSU stream (:class:`corridor.mobility.v2x.rsu_stream.RsuStream`): a traffic
  centre SAE sending 1609.2 ``EncryptedData`` to a roadside unit SAE under PSKs derived
  from QKD keys the two fetch from their KMEs, rotated every 30 s;
- a small fleet (:class:`corridor.mobility.fleet.enclave.FleetEnclave`): a back end, a
  depot gateway and three simulated vehicles on the MQTT broker (127.0.0.1:1883), the
  back end-to-depot leg keyed by a hybrid session (QKD + X-Wing); while the broker is
  down the fleet says so and retries;
- a small OTA campaign (:class:`corridor.mobility.ota.campaign.OtaCampaign`): the image
  and director repositories served over HTTPS on a free local port, one release whose
  campaign key goes OEM -> regional site over a hybrid session (QKD + X-Wing), three
  simulated vehicles that verify every role's hybrid signatures and install it, in a
  background thread; :meth:`UpMobility.ota`'s ``status()`` has a row per vehicle.

All three use the first ``[[hybrid]]`` pair of the corridor file (else the first two SAEs at
different KMEs): its master SAE is the traffic centre and the fleet back end, its slave
the RSU, the depot and the OTA regional site.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from rich.table import Table

from corridor.kms.client import SaeClient
from corridor.kms.node import Corridor


def _pair(corridor: Corridor) -> tuple[str, str]:
    spec = corridor.spec
    if spec.hybrid:
        return spec.hybrid[0].master_sae_id, spec.hybrid[0].slave_sae_id
    saes = list(spec.saes)
    first = saes[0]
    return first, next(s for s in saes if spec.saes[s] != spec.saes[first])


class UpMobility:
    """The RSU stream and the fleet of a running corridor (:meth:`start`, :meth:`close`)."""

    def __init__(self, corridor: Corridor) -> None:
        self.corridor = corridor
        self.rsu: Any = None
        self.fleet: Any = None
        self.ota: Any = None
        self._clients: list[SaeClient] = []

    def _client(self, sae_id: str) -> SaeClient:
        pki = self.corridor.pki
        assert pki is not None
        kme_id = self.corridor.spec.saes[sae_id]
        paths = pki.saes[sae_id]
        client = SaeClient(self.corridor.nodes[kme_id].url or "", paths.cert, paths.key,
                           pki.ca_cert, expected_kme_id=kme_id, max_connections=2)
        self._clients.append(client)
        return client

    def start(self) -> None:
        """Start the RSU stream and the fleet (after the corridor started)."""
        from corridor.mobility.fleet.enclave import FleetEnclave
        from corridor.mobility.v2x.rsu_stream import RsuStream

        centre, rsu = _pair(self.corridor)
        self.rsu = RsuStream(self._client(centre), self._client(rsu), centre, rsu)
        self.rsu.start()
        self.fleet = FleetEnclave.for_corridor(self.corridor)
        self.fleet.start()
        self.ota = self._ota_campaign(centre, rsu)
        self.ota.start()

    def _ota_campaign(self, oem: str, regional: str) -> Any:
        from corridor.hybrid.qkd import KmeQkdKeys
        from corridor.mobility.ota.campaign import OtaCampaign

        spec = self.corridor.spec
        policy = spec.hybrid[0].policy if spec.hybrid else "both-required"
        return OtaCampaign(self.corridor.workdir / "ota", oem_sae_id=oem,
                           regional_sae_id=regional, policy=policy,
                           oem_qkd=KmeQkdKeys(self._client(oem)),
                           regional_qkd=KmeQkdKeys(self._client(regional)))

    def describe(self) -> dict[str, Any]:
        """What ``corridor-up.json`` says about them."""
        out: dict[str, Any] = {}
        if self.rsu is not None:
            out["rsu_stream"] = {"centre_sae_id": self.rsu.centre_sae_id,
                                 "rsu_sae_id": self.rsu.rsu_sae_id,
                                 "psk_rotation_s": self.rsu.policy.interval_s}
        if self.fleet is not None:
            out["fleet"] = self.fleet.describe()
        if self.ota is not None:
            out["ota"] = self.ota.describe()
        return out

    def close(self) -> None:
        """Stop both (each joined) and close their KME clients."""
        for part in (self.ota, self.fleet, self.rsu):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        for client in self._clients:
            client.close()
        self._clients = []


def rsu_text(status: dict[str, Any]) -> str:
    received = ", ".join(f"{k}:{v}" for k, v in sorted(status["received"].items())) or "-"
    return (f"{status['centre_sae_id']}->{status['rsu_sae_id']} gen={status['generation']} "
            f"rotations={status['rotations']} sent={status['sent']} rsu={received} "
            f"key_failures={status['key_failures']}"
            + (f" waiting_for_key={status['waiting_for_key']}"
               if status["generation"] is None else ""))


def fleet_text(status: dict[str, Any]) -> str:
    session = status.get("session") or {}
    acks = ", ".join(f"{k}:{v}" for k, v in sorted(status["acks"].items())) or "-"
    inputs = "+".join(session.get("inputs") or []) or "-"
    return (f"{status['state']} broker={status['broker']} inputs={inputs} "
            f"sent={status['commands_sent']} acks={acks}"
            + (f" error={status['last_error']}" if status.get("last_error") else ""))


def ota_text(status: dict[str, Any]) -> str:
    states = Counter(v["state"] for v in status["vehicles"])
    inputs = "+".join(status.get("session_inputs") or []) or "-"
    served = (status.get("server") or {}).get("bytes_served", 0)
    return (f"{status['state']} v{status['version'] or '-'} key={inputs} "
            f"vehicles={', '.join(f'{k}:{n}' for k, n in sorted(states.items())) or '-'} "
            f"served={served}B"
            + (f" error={status['last_error']}" if status.get("last_error") else ""))


def ota_vehicle_text(row: dict[str, Any]) -> str:
    return (f"{row['state']} v{row['installed_version']}"
            + (f" error={row['last_error']}" if row.get("last_error") else ""))


def mobility_table(mobility: UpMobility) -> Table:
    """The RSU stream, the fleet and the OTA campaign (and each of its vehicles), a row
    each."""
    table = Table(title="mobility (V2X to the RSU, fleet commands, OTA)", title_justify="left")
    table.add_column("what")
    table.add_column("state")
    if mobility.rsu is not None:
        table.add_row("RSU stream (1609.2 PSK, QKD-keyed)", rsu_text(mobility.rsu.status()))
    if mobility.fleet is not None:
        table.add_row("fleet (MQTT, hybrid-signed commands)",
                      fleet_text(mobility.fleet.status()))
    if mobility.ota is not None:
        status = mobility.ota.status()
        table.add_row("OTA (Uptane, Ed25519+ML-DSA-65)", ota_text(status))
        for row in status["vehicles"]:
            table.add_row(f"  OTA {row['vehicle_id']}", ota_vehicle_text(row))
    return table


def mobility_line(mobility: UpMobility) -> str:
    """Both in one plain segment of the status line."""
    parts = []
    if mobility.rsu is not None:
        parts.append("rsu: " + rsu_text(mobility.rsu.status()))
    if mobility.fleet is not None:
        parts.append("fleet: " + fleet_text(mobility.fleet.status()))
    if mobility.ota is not None:
        parts.append("ota: " + ota_text(mobility.ota.status()))
    return " | ".join(parts)


__all__ = ["UpMobility", "mobility_line", "mobility_table"]
