"""Net: a whole corridor (ARCHITECTURE.md, layer ``net``).

The network read from the corridor file (sites, links, SAEs, demand:
:mod:`corridor.net.topology`), the planner that routes the demand over the links' key
rates (:mod:`corridor.net.plan`, its LP in :mod:`corridor.net.flow`) and the map figure
(:mod:`corridor.net.plot`). Imports ``link``, ``kms`` and ``hybrid``; nothing above
imports it.
"""
