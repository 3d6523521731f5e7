"""The fleet command enclave: high-value commands from a back end, via a depot, to vehicles.

A fleet back end issues commands (immobilise, route change, geofence update, remote
diagnostics) to a depot gateway and on to vehicles, over MQTT. Every command is numbered,
time-limited, addressed, signed (ML-DSA-44 and Ed25519, both must verify), encrypted
(AES-256-GCM: under a hybrid QKD + X-Wing session key between back end and depot, under
one ML-KEM-768 encapsulation per command between depot and vehicle), authorised by a
role policy, and acknowledged with a vehicle-signed ack. Design, wire format and threat
model: docs/fleet.md. One module per job:

- :mod:`.wire`: the byte encodings; :mod:`.commands`: command types and their parameters;
- :mod:`.signing`: hybrid signatures; :mod:`.sealing`: both legs' encryption;
- :mod:`.keys`: identities and the fleet directory; :mod:`.policy`: the role policy;
- :mod:`.guard`: the checks and refusal records; :mod:`.transport`: MQTT;
- :mod:`.backend`, :mod:`.depot`, :mod:`.vehicle`: the three parties;
- :mod:`.enclave`: a depot and vehicles fed by a running corridor's SAEs (``corridor up``).
"""
