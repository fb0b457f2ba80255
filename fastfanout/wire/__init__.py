"""The wire protocol of server mode (``protocol``): headers, opcodes, statuses, payloads.

The frame layouts are written down in docs/protocol.md; the native codecs live in
``fastfanout._ext.wire`` and ``fastfanout._ext.codec``.
"""
