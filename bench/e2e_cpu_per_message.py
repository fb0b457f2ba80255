"""CPU time per message of each process of the per-message loop (issue 15).

python bench/e2e_cpu_per_message.py [-n N] [--consumers 1 4] [--runs R]
    [--perf broker|consumer|producer] [--perf-out FILE] [--publish offer|nowait]
    [--baseline]

One publisher process calling ``producer.offer(body)`` (``--publish nowait``:
``client.publish_nowait(topic, body)``) per 64-byte message -> a broker
process (local channels) -> ``--consumers`` queues subscribed to one topic, a consumer
process each running ``for m in client.consume(q): m.body; m.ack()``. Prints, per run and
as medians, the CPU time per message of the broker (every thread, from
``/proc/PID/task/*/schedstat``: nanoseconds, not clock ticks), of the publisher and of
the consumers (``time.process_time``, their mean), and the wall-clock rate per consumer.
``--baseline`` adds raw pyzmq in the same shape (a PUSH process sending each body to each
of N PULL processes, one message per send, bare ``recv()`` loops) and the ratio: the
issue's two loops with nothing else in them, where ``e2e_per_message.py`` (the harness)
also stores and counts every body on both sides.

CPU per message is what the wall-clock ratios of ``e2e_per_message.py`` rest on, and it
is far steadier on a shared machine: under load a process gets less of the cores, not
more work per message. ``--perf`` records the named process (the first consumer) with
``perf record -g`` for the measured part of the last run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

from e2e_common import (
    BODY,
    START_DEADLINE,
    connect_when_up,
    cpu_seconds,
    serve_broker,
    stop_processes,
)

from fastfanout.bench.processes import spawn

PREFETCH = 16000
"""The consumers' prefetch (the harness's ``--receive each`` uses the same)."""
QUEUE_BOUND = 65536
"""Each queue's ``max_messages`` (overflow ``hold``: the publisher waits for room)."""
RESULT_DEADLINE = 300.0
"""Seconds a run may take before it is abandoned."""


def _consume(endpoint: str, queue: str, count: int, ready: Any, out: Any) -> None:
    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()
    client = connect(endpoint, local_channel=True)
    consumer = client.consume(queue, prefetch=PREFETCH, timeout=START_DEADLINE)
    ready.set()
    messages = iter(consumer)
    message = next(messages)   # the clocks start at the first message
    cpu, wall = time.process_time(), time.perf_counter()
    body = message.body   # read, as users do (made on first access)
    message.ack()
    seen = 1
    for message in messages:
        body = message.body
        message.ack()
        seen += 1
        if seen >= count:
            break
    out.put(("consumer", time.process_time() - cpu, time.perf_counter() - wall, seen))
    assert len(body) == len(BODY)
    consumer.cancel()
    client.close()


def _publish(endpoint: str, count: int, go: Any, out: Any, mode: str = "offer") -> None:
    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()
    client = connect(endpoint, local_channel=True)
    producer = client.producer("t", batch_messages=1000, max_in_flight=8)
    go.wait(START_DEADLINE)
    cpu, wall = time.process_time(), time.perf_counter()
    if mode == "nowait":   # one publish_nowait per message, its future dropped
        publish = client.publish_nowait
        for _ in range(count):
            publish("t", BODY)
        client.flush()
    else:
        offer = producer.offer
        for _ in range(count):
            offer(BODY)
    producer.close()
    out.put(("producer", time.process_time() - cpu, time.perf_counter() - wall, count))
    client.close()


def _zmq_pull(endpoint: str, count: int, ready: Any, out: Any) -> None:
    import zmq

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, PREFETCH)
    pull.bind(endpoint)
    ready.set()
    recv = pull.recv
    body = recv()   # the clocks start at the first message, as the consumer's do
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count - 1):
        body = recv()
    out.put(("consumer", time.process_time() - cpu, time.perf_counter() - wall, count))
    assert len(body) == len(BODY)
    pull.close(linger=0)
    context.term()


def _zmq_push(endpoints: list[str], count: int, go: Any, out: Any) -> None:
    import zmq

    context = zmq.Context()
    pushes = []
    for endpoint in endpoints:
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, PREFETCH)
        push.connect(endpoint)
        pushes.append(push.send)
    go.wait(START_DEADLINE)
    cpu, wall = time.process_time(), time.perf_counter()
    if len(pushes) == 1:
        (send,) = pushes
        for _ in range(count):
            send(BODY)
    else:
        for _ in range(count):
            for send in pushes:
                send(BODY)
    out.put(("producer", time.process_time() - cpu, time.perf_counter() - wall, count))
    context.destroy(linger=-1)


def baseline(count: int, pulls: int) -> float:
    """Raw pyzmq in the same shape, one message per send: a PUSH process sending each
    body to each of ``pulls`` PULL processes, each ``recv()`` in a bare loop; the rate
    per PULL."""
    context = spawn()
    with tempfile.TemporaryDirectory(prefix="ffcpu-") as directory:
        endpoints = [f"ipc://{os.path.join(directory, f'pull{index}.sock')}"
                     for index in range(pulls)]
        out, go = context.Queue(), context.Event()
        readies = [context.Event() for _ in range(pulls)]
        processes = [context.Process(target=_zmq_pull, args=(
            endpoint, count, ready, out)) for endpoint, ready in zip(endpoints, readies,
                                                                     strict=True)]
        processes.append(context.Process(target=_zmq_push, args=(endpoints, count, go, out)))
        try:
            for process in processes:
                process.start()
            for ready in readies:
                if not ready.wait(START_DEADLINE):
                    raise RuntimeError("a PULL did not start")
            wall = time.perf_counter()
            go.set()
            for _ in range(pulls + 1):
                out.get(timeout=RESULT_DEADLINE)
            wall = time.perf_counter() - wall
        finally:
            stop_processes(processes)
    return count / wall


def run(count: int, queues: int, perf: str | None, perf_out: str,
        mode: str = "offer") -> dict[str, float]:
    """One run: ns of CPU per message by process, and the rate per consumer."""
    context = spawn()
    with tempfile.TemporaryDirectory(prefix="ffcpu-") as directory:
        endpoint = f"ipc://{os.path.join(directory, 'ff.sock')}"
        broker = context.Process(target=serve_broker, args=(endpoint,))
        broker.start()
        clients: list[Any] = []
        try:
            with connect_when_up(endpoint, broker) as client:
                client.create_topic("t")
                for group in range(queues):
                    client.create_queue(f"q{group}", max_messages=QUEUE_BOUND,
                                        overflow="hold")
                    client.subscribe("t", f"q{group}")
            out, go = context.Queue(), context.Event()
            readies = [context.Event() for _ in range(queues)]
            consumers = [context.Process(target=_consume, args=(
                endpoint, f"q{group}", count, readies[group], out)) for group in range(queues)]
            publisher = context.Process(target=_publish, args=(endpoint, count, go, out, mode))
            clients += [*consumers, publisher]
            for process in clients:
                process.start()
            for ready in readies:
                if not ready.wait(START_DEADLINE):
                    raise RuntimeError("a consumer did not start")
            recorder = None
            pid = {"broker": broker.pid, "consumer": consumers[0].pid,
                   "producer": publisher.pid}.get(perf or "")
            if pid is not None:
                recorder = subprocess.Popen(
                    ["perf", "record", "-g", "-o", perf_out, "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)   # perf attaches
            broker_before, wall = cpu_seconds(broker.pid), time.perf_counter()
            go.set()
            results = [out.get(timeout=RESULT_DEADLINE) for _ in range(queues + 1)]
            wall = time.perf_counter() - wall
            broker_cpu = cpu_seconds(broker.pid) - broker_before
            if recorder is not None:
                recorder.send_signal(2)
                recorder.wait(START_DEADLINE)
        finally:
            stop_processes(clients)   # each joined (a deadline), then terminated
            broker.terminate()
            stop_processes([broker])
    consumer_ns = [cpu / seen * 1e9 for kind, cpu, _, seen in results if kind == "consumer"]
    (producer_ns,) = [cpu / sent * 1e9 for kind, cpu, _, sent in results if kind == "producer"]
    return {"broker": broker_cpu / count * 1e9, "producer": producer_ns,
            "consumer": statistics.mean(consumer_ns), "rate": count / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=1_000_000)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--perf", choices=["broker", "consumer", "producer"],
                        help="perf record this process (the last run)")
    parser.add_argument("--perf-out", default="perf.data")
    parser.add_argument("--publish", choices=["offer", "nowait"], default="offer",
                        help="the publisher's loop: producer.offer, or one "
                             "client.publish_nowait per message")
    parser.add_argument("--baseline", action="store_true",
                        help="also raw pyzmq PUSH -> PULL in the same shape, one message "
                             "per send, bare recv() loops, and the ratio")
    args = parser.parse_args()
    print(f"ns of CPU per message by process; rate per consumer (load {os.getloadavg()[0]:.1f})")
    for queues in args.consumers:
        rows = []
        for index in range(args.runs):
            last = index == args.runs - 1
            row = run(args.messages, queues, args.perf if last else None, args.perf_out,
                      args.publish)
            rows.append(row)
            print(f"  {queues} consumer(s), run {index + 1}: broker {row['broker']:.0f}, "
                  f"producer {row['producer']:.0f}, consumer {row['consumer']:.0f}, "
                  f"{row['rate'] / 1e6:.2f} M msg/s", flush=True)
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{queues} consumer(s), median of {args.runs}: broker {median['broker']:.0f}, "
              f"producer {median['producer']:.0f}, consumer {median['consumer']:.0f}, "
              f"{median['rate'] / 1e6:.2f} M msg/s (load {os.getloadavg()[0]:.1f})")
        if args.baseline:
            rates = []
            for index in range(args.runs):
                rates.append(baseline(args.messages, queues))
                print(f"  raw pyzmq PUSH to {queues} PULL(s), run {index + 1}: "
                      f"{rates[-1] / 1e6:.2f} M msg/s per PULL", flush=True)
            rate = statistics.median(rates)
            print(f"{queues} consumer(s): raw pyzmq {rate / 1e6:.2f} M msg/s per PULL, "
                  f"fastfanout / raw pyzmq {median['rate'] / rate:.2f}x (bare loops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
