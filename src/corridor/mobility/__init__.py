"""Mobility: session keys -> protected traffic (ARCHITECTURE.md, layer ``mobility``).

Key exports into the tunnels operators already run (IPsec, MACsec, WireGuard), V2X
messages, OTA updates and fleet commands. Imports ``hybrid`` and the layers above it.
"""
