"""Durable brokers: the data directory, its lock, the journal, recovery, compaction.

The module ``durability`` holds them; the on-disk format is in docs/storage.md; the native
journal is ``fastfanout._ext.journal``.
"""
