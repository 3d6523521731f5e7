"""Over-the-air software updates, Uptane-style, on python-tuf, hybrid-signed and encrypted.

An image repository (the OEM's offline-signed firmware catalogue, with delegations to
suppliers) and a director repository per vehicle (the regional site's instructions),
each a TUF repository whose every role is signed by hybrid keys (Ed25519 and ML-DSA-65,
both must verify); firmware encrypted per campaign (AES-256-GCM), the campaign key
carried OEM -> regional site over a corridor hybrid session (QKD + ML-KEM) and wrapped to
each vehicle's ML-KEM-768 key; a primary ECU that verifies both repositories fully and
installs the whole bundle or nothing, secondaries that verify partially. Design and
threat model: docs/ota.md. One module per job:

- :mod:`.keys`: the hybrid key type and key files; :mod:`.repository`: one TUF repository;
- :mod:`.images`: image encryption, key wrapping; :mod:`.regional`: the hybrid-session leg;
- :mod:`.backend`: the OTA directory, releases, assignments; :mod:`.director`: manifests
  and campaign status; :mod:`.manifest`: the vehicle's signed manifest;
- :mod:`.server`: HTTPS; :mod:`.fetcher`: the vehicle's bounded downloads;
- :mod:`.primary`, :mod:`.secondary`, :mod:`.slots`: the vehicle;
- :mod:`.campaign`: a small campaign run in the background (``corridor up``);
- :mod:`.errors`: the refusal reasons.
"""

# Registers the hybrid key type with securesystemslib before any metadata is read.
from corridor.mobility.ota import keys as keys
