"""Requests and replies, one at a time: fastfanout beside raw pyzmq and NATS.

python bench/e2e_request_reply.py [--requests 5000] [--runs 3] [--body 64]
    [--peers zmq,nats]

Three processes on each path, a requester, a broker and a responder; the requester sends
its next request once it has the reply to the last (closed loop: the round trip is what
is measured), and the first tenth of the requests of each run is not timed (warm-up).

- fastfanout: ``client.request("t", body)`` -> broker process (a topic, one queue) -> a
  responder process consuming the queue (``consume(prefetch=16)``) and answering each
  message with ``message.reply(body)`` then ``message.ack()``; the reply comes back
  through the broker to the waiting ``request``;
- pyzmq: REQ -> a ``zmq.proxy`` (ROUTER -> DEALER) in its own process -> REP, the
  request-reply broker pattern of the ZeroMQ guide, over ipc (no queue, no lease, no ack:
  the transport's own ceiling for this topology);
- NATS: ``nc.request(subject, body)`` (nats-py) -> nats-server -> a responder process
  subscribed to the subject (``msg.respond(body)``): core NATS request-reply, at most
  once, nothing stored; skipped (one line) when no nats-server can be had.

Reports requests a second (medians of the runs), the p50 and p99 round trip in µs (the
median run's), and the ratio of fastfanout's rate to each peer's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from e2e_common import broker_process, connect_when_up

READY_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _timed(round_trip: Any, requests: int, body: bytes) -> list[float]:
    """Call ``round_trip(body)`` ``requests`` times; the times of all but the warm-up."""
    warm = requests // 10
    times: list[float] = []
    clock = time.perf_counter
    for index in range(requests):
        started = clock()
        round_trip(body)
        if index >= warm:
            times.append(clock() - started)
    return times


# -- fastfanout -------------------------------------------------------------------------

def _ff_respond(endpoint: str, out: Any) -> None:
    from fastfanout.client import connect

    with connect(endpoint) as client:
        consumer = client.consume("q", prefetch=16, timeout=5.0)
        out.put("ready")
        for message in consumer:
            message.reply(bytes(message.body))
            message.ack()


def _ff_request(endpoint: str, requests: int, body: bytes, out: Any) -> None:
    from fastfanout.client import connect

    with connect(endpoint) as client:
        def round_trip(data: bytes) -> None:
            client.request("t", data, timeout=10.0)

        out.put(_timed(round_trip, requests, body))


def fastfanout_run(requests: int, body: bytes) -> list[float]:
    ctx = mp.get_context("spawn")
    with broker_process() as (endpoint, broker):
        with connect_when_up(endpoint, broker) as client:
            client.create_topic("t")
            client.create_queue("q")
            client.subscribe("t", "q")
        out = ctx.Queue()
        responder = ctx.Process(target=_ff_respond, args=(endpoint, out))
        responder.start()
        out.get(timeout=READY_TIMEOUT)
        requester = ctx.Process(target=_ff_request, args=(endpoint, requests, body, out))
        requester.start()
        times: list[float] = out.get(timeout=RUN_TIMEOUT)
        requester.join(30)
        responder.terminate()   # done: its consumer would wait 5 s more for requests
        responder.join(30)
    return times


# -- raw pyzmq: REQ -> ROUTER/DEALER proxy -> REP -------------------------------------

def _zmq_proxy(front: str, back: str) -> None:
    import zmq

    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    router.bind(front)
    dealer.bind(back)
    try:
        zmq.proxy(router, dealer)
    except zmq.ContextTerminated:
        pass


def _zmq_respond(back: str, requests: int) -> None:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.connect(back)
    for _ in range(requests):
        socket.send(socket.recv())
    socket.close(linger=1000)
    context.term()


def _zmq_request(front: str, requests: int, body: bytes, out: Any) -> None:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.connect(front)

    def round_trip(data: bytes) -> None:
        socket.send(data)
        socket.recv()

    out.put(_timed(round_trip, requests, body))
    socket.close(linger=0)
    context.term()


def zmq_run(requests: int, body: bytes) -> list[float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="ffbench-rr-") as directory:
        front = f"ipc://{os.path.join(directory, 'front')}"
        back = f"ipc://{os.path.join(directory, 'back')}"
        proxy = ctx.Process(target=_zmq_proxy, args=(front, back), daemon=True)
        proxy.start()
        responder = ctx.Process(target=_zmq_respond, args=(back, requests))
        responder.start()
        out = ctx.Queue()
        requester = ctx.Process(target=_zmq_request, args=(front, requests, body, out))
        requester.start()
        try:
            times: list[float] = out.get(timeout=RUN_TIMEOUT)
        finally:
            requester.join(30)
            responder.join(30)
            proxy.terminate()
            proxy.join(30)
    return times


# -- NATS core request-reply ------------------------------------------------------------

def _nats_respond(url: str, out: Any) -> None:
    import asyncio

    import nats

    async def main() -> None:
        client = await nats.connect(url)

        async def answer(message: Any) -> None:
            await message.respond(message.data)

        await client.subscribe("rr", cb=answer)
        await client.flush()
        out.put("ready")
        await asyncio.sleep(RUN_TIMEOUT)

    asyncio.run(main())


def _nats_request(url: str, requests: int, body: bytes, out: Any) -> None:
    import asyncio

    import nats

    async def main() -> list[float]:
        client = await nats.connect(url)
        warm = requests // 10
        times: list[float] = []
        clock = time.perf_counter
        for index in range(requests):
            started = clock()
            await client.request("rr", body, timeout=10.0)
            if index >= warm:
                times.append(clock() - started)
        await client.close()
        return times

    out.put(asyncio.run(main()))


def nats_run(requests: int, body: bytes) -> list[float]:
    from fastfanout.bench.servers import nats_server

    ctx = mp.get_context("spawn")
    with nats_server(sync="default") as peer:
        out = ctx.Queue()
        responder = ctx.Process(target=_nats_respond, args=(peer.url, out), daemon=True)
        responder.start()
        try:
            out.get(timeout=READY_TIMEOUT)
            requester = ctx.Process(target=_nats_request,
                                    args=(peer.url, requests, body, out))
            requester.start()
            times: list[float] = out.get(timeout=RUN_TIMEOUT)
            requester.join(30)
        finally:
            responder.terminate()
            responder.join(30)
    return times


RUNS = {"fastfanout": fastfanout_run, "zmq": zmq_run, "nats": nats_run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--body", type=int, default=64, help="body bytes")
    parser.add_argument("--peers", default="zmq,nats",
                        help="comma-separated: zmq, nats (or none)")
    args = parser.parse_args()
    if args.requests < 10 or args.runs < 1 or args.body < 0:
        parser.error("--requests must be 10 or more, --runs 1 or more, --body 0 or more")
    peers = [] if args.peers in ("", "none") else args.peers.split(",")
    unknown = [peer for peer in peers if peer not in ("zmq", "nats")]
    if unknown:
        parser.error(f"unknown peer(s) {','.join(unknown)}: choose from zmq, nats")
    paths = ["fastfanout", *peers]
    if "nats" in paths:
        from fastfanout.bench.servers import nats_unavailable

        reason = nats_unavailable()
        if reason:
            print(f"nats: skipped ({reason})", file=sys.stderr)
            paths.remove("nats")
    body = b"x" * args.body
    rates: dict[str, list[float]] = {path: [] for path in paths}
    latencies: dict[str, list[list[float]]] = {path: [] for path in paths}
    for _ in range(args.runs):
        for path in paths:   # alternated within each run: the machine's drift is shared
            times = sorted(RUNS[path](args.requests, body))
            rates[path].append(len(times) / sum(times))
            latencies[path].append(times)
    print(f"{args.requests:,} requests of {args.body} bytes, one at a time, median of "
          f"{args.runs} runs")
    print("| path | requests/s (median) | p50 µs | p99 µs | runs, requests/s |")
    print("|---|---:|---:|---:|---|")
    medians: dict[str, float] = {}
    for path in paths:
        medians[path] = statistics.median(rates[path])
        middle = sorted(range(args.runs), key=lambda i: rates[path][i])[args.runs // 2]
        times = latencies[path][middle]
        print(f"| {path} | {medians[path]:,.0f} | {_percentile(times, 0.5) * 1e6:,.0f} | "
              f"{_percentile(times, 0.99) * 1e6:,.0f} | "
              f"{', '.join(f'{rate:,.0f}' for rate in rates[path])} |")
    for peer in paths[1:]:
        print(f"fastfanout / {peer}: {medians['fastfanout'] / medians[peer]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
