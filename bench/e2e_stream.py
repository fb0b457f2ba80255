"""End-to-end stream fan-out: fastfanout listeners through a broker vs raw pyzmq PUB->SUB.

python bench/e2e_stream.py [--messages N] [--runs R] [--listeners L] [--modes batch single producer]
Baseline: one PUB process -> L SUB processes, one 64-byte message per send (one hop).
fastfanout: one publisher process -> broker process -> L processes reading
``client.listen("t")`` batch by batch (``recv_batch``). The publisher either calls
``publish_batch_nowait`` with 1,000 bodies, at most 8 batches in flight (``batch``), or
``publish_nowait`` once per message, batched on the wire by the client (``single``). Reports
the per-listener rate (messages/s, median of the listeners, then median of the runs),
the ratio to the baseline, and the messages each side lost: for the baseline, sent minus
received; for fastfanout, the listeners' sequence gaps plus what never arrived, and the
broker's own ``stream_dropped`` counter.

Every process is spawned, every wait has a deadline, and whatever is still alive at the
end of a run is terminated (then killed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from typing import Any

from e2e_common import (
    BODY,
    START_DEADLINE,
    add_modes_argument,
    broker_process,
    connect_when_up,
    publish_run,
    stop_processes,
)

HELLO = b"hello"
IDLE = 3.0  # seconds without a message after which a listener stops counting
RUN_DEADLINE = 300.0




# -- baseline: raw PUB -> SUB ---------------------------------------------------------------


def _sub(endpoint: str, count: int, out: Any) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    sock.setsockopt(zmq.RCVTIMEO, int(START_DEADLINE * 1000))
    ready = False
    got = 0
    started = last = 0.0
    try:
        while not got:
            message = sock.recv()
            if len(message) == len(BODY):
                started = time.perf_counter()
                got = 1
            elif not ready:
                ready = True
                out.put(("ready", None))
        sock.setsockopt(zmq.RCVTIMEO, int(IDLE * 1000))
        recv = sock.recv
        while got < count:
            recv()
            got += 1
    except zmq.Again:
        pass
    last = time.perf_counter()
    if got < count:
        last -= IDLE  # stopped by the idle timeout: the last message came IDLE s earlier
    rate = (got - 1) / (last - started) if got > 1 and last > started else 0.0
    out.put(("done", (rate, count - got)))
    sock.close(linger=0)
    context.term()


def _pub(endpoint: str, count: int, go: Any) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 1_000_000)
    sock.bind(endpoint)
    deadline = time.monotonic() + START_DEADLINE
    # PUB drops whatever is sent before a subscription arrives (the "slow joiner"):
    # announce until every SUB has heard us, then send the measured messages.
    while not go.wait(0.01) and time.monotonic() < deadline:
        sock.send(HELLO)
    for _ in range(count):
        sock.send(BODY)
    sock.close(linger=int(RUN_DEADLINE * 1000))
    context.term()


def baseline(count: int, listeners: int) -> tuple[float, int]:
    """One run of the raw pyzmq baseline: (median per-SUB rate, messages lost in total)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        endpoint = f"ipc://{directory}/ps"
        out = ctx.Queue()
        go = ctx.Event()
        pub = ctx.Process(target=_pub, args=(endpoint, count, go))
        subs = [ctx.Process(target=_sub, args=(endpoint, count, out)) for _ in range(listeners)]
        try:
            pub.start()
            for sub in subs:
                sub.start()
            results: list[tuple[float, int]] = []
            ready = 0
            while len(results) < listeners:
                kind, value = out.get(timeout=RUN_DEADLINE if ready == listeners
                                      else START_DEADLINE)
                if kind == "ready":
                    ready += 1
                    if ready == listeners:
                        go.set()
                else:
                    results.append(value)
        finally:
            go.set()
            stop_processes([pub, *subs])
            out.close()
    return statistics.median(rate for rate, _ in results), sum(lost for _, lost in results)


# -- fastfanout: publisher -> broker -> listen() --------------------------------------------


def _listen(endpoint: str, count: int, out: Any) -> None:
    from fastfanout.client import connect

    with connect(endpoint) as client, client.listen("t") as listener:
        out.put(("ready", None))
        got = 0
        first_batch = 0
        started = last = 0.0
        timeout = START_DEADLINE + RUN_DEADLINE
        while got < count:
            batch = listener.recv_batch(timeout)
            if batch is None:
                break
            last = time.perf_counter()
            if not got:
                started, first_batch = last, len(batch)
                timeout = IDLE
            got += len(batch)
        counted = got - first_batch
        rate = counted / (last - started) if counted and last > started else 0.0
        out.put(("done", (rate, listener.gaps, count - got)))




def fastfanout_run(count: int, listeners: int, mode: str) -> tuple[float, int, int, int]:
    """One run through the broker: (median per-listener rate, gaps, missing, dropped)."""
    ctx = mp.get_context("spawn")
    with broker_process() as (endpoint, broker):
        out = ctx.Queue()
        procs = [ctx.Process(target=_listen, args=(endpoint, count, out))
                 for _ in range(listeners)]
        pub = ctx.Process(target=publish_run, args=(endpoint, count, mode))
        started: list[Any] = []
        try:
            with connect_when_up(endpoint, broker) as client:
                client.create_topic("t")
                for proc in procs:
                    proc.start()
                    started.append(proc)
                for _ in procs:
                    out.get(timeout=START_DEADLINE)
                # listen() returns before libzmq delivered the subscription: wait until
                # the broker has seen every one, or the first batches would go nowhere
                deadline = time.monotonic() + START_DEADLINE
                while client.server_stats().get("stream_subscriptions", 0) < listeners:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the listeners' subscriptions never arrived")
                    time.sleep(0.01)
                pub.start()
                started.append(pub)
                results = [out.get(timeout=RUN_DEADLINE)[1] for _ in procs]
                pub.join(RUN_DEADLINE)
                dropped = int(client.server_stats().get("stream_dropped", 0))
        finally:
            stop_processes(started)
            out.close()
    rate = statistics.median(result[0] for result in results)
    return (rate, sum(result[1] for result in results), sum(result[2] for result in results),
            dropped)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--listeners", type=int, default=4)
    add_modes_argument(parser)
    args = parser.parse_args()
    base = [baseline(args.messages, args.listeners) for _ in range(args.runs)]
    base_median = statistics.median(rate for rate, _ in base)
    print(f"baseline PUB->{args.listeners} SUB: median {base_median / 1e6:.3f} M msg/s per "
          f"SUB; lost {[lost for _, lost in base]} of {args.messages} x {args.listeners}; "
          f"runs {[round(rate) for rate, _ in base]}")
    for mode in args.modes:
        runs = [fastfanout_run(args.messages, args.listeners, mode) for _ in range(args.runs)]
        median = statistics.median(run[0] for run in runs)
        print(f"fastfanout ({mode} publish) 1 pub -> broker -> {args.listeners} listen(): "
              f"median {median / 1e6:.3f} M msg/s per listener, "
              f"ratio {median / base_median:.2f}x; gaps {[run[1] for run in runs]}, "
              f"missing {[run[2] for run in runs]}, broker stream_dropped "
              f"{[run[3] for run in runs]}; runs {[round(run[0]) for run in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
