"""Key management: key stores, ETSI GS QKD 014 delivery, KME-to-KME agreement, operations."""
