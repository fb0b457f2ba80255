"""Peer servers for the scripts of bench/: the installed ``fastfanout.bench.servers``.

Kept so that ``import peers`` of the scripts beside it keeps working; the one copy of the
code is in the package (``fastfanout bench`` uses it too).
"""

from fastfanout.bench.servers import (  # noqa: F401
    HOST,
    NATS_SYNC,
    REDIS_FSYNC,
    START_ATTEMPTS,
    START_DEADLINE,
    STOP_DEADLINE,
    Peer,
    PeerUnavailable,
    find_binary,
    free_port,
    nats_args,
    nats_config,
    nats_server,
    nats_unavailable,
    redis_args,
    redis_server,
    redis_unavailable,
    stop_process,
)
