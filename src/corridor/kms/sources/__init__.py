"""Key sources and the feeder that drives their blocks into the two KMEs of a link.

One module per job; import from the module that owns a name (this package re-exports
nothing):

- :mod:`corridor.kms.sources.base`: the ``KeySource`` seam (ARCHITECTURE.md),
  :class:`~corridor.kms.sources.base.SourceBlock`, the side names and the helpers the
  sources share;
- :mod:`corridor.kms.sources.recorded`: ``RecordedKeyFileSource``, Alice's and Bob's
  recorded key files (``corridor link run --keys-out DIR``) cut into blocks;
- :mod:`corridor.kms.sources.simulated`: ``SimulatedLinkSource``, the simulated link and
  both parties' distillation in background threads of one process;
- :mod:`corridor.kms.sources.party`: ``SimulatedLinkPartySource``, one party of a
  simulated link over TCP for a split-site deployment, with its session, resume and
  ``block.done`` protocol;
- :mod:`corridor.kms.sources.feeder`: ``LinkFeeder`` (with ``FeederStats`` and
  ``FeedError``), which drives a source's blocks into the KeyManagers: monitoring,
  both-or-neither storage and block IDs that continue across restarts.
"""
