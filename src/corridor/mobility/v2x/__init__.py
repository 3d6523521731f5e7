"""V2X message protection: the IEEE 1609.2 / ETSI TS 103 097 envelope at the roadside.

Modules: :mod:`.encoding` (canonical OER through pycrate, Corridor's post-quantum
extension alternatives), :mod:`.signing` (ECDSA P-256, ML-DSA-44, hybrid),
:mod:`.certificates` (authorities, tickets, 1609.2 time), :mod:`.messages` (signed
messages), :mod:`.verifier` (the RSU's checks, caches and refusal counts), :mod:`.psk`
(pre-shared-key EncryptedData keyed from QKD, rotated by policy) and :mod:`.budget`
(encoded sizes against the frame ceiling). docs/v2x.md describes them.
"""
