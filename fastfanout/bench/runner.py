"""Running one measurement: receiver and publisher processes around a system's adapter.

The harness starts the system (``Adapter.serve``), then one process per receiver (each
group's members), waits until each is ready and every subscription is in place, then one
process per publisher. When every publisher is connected, it sets the start time ``go``
(``time.monotonic_ns``: one clock for every process of the host) and they publish:

- as fast as they can, batch after batch (``rate`` None), or
- open loop (``rate`` given): message i of publisher p is due at ``go + (i * P + p) /
  rate`` and is sent then whatever happened to the ones before; with batches of B, a batch
  is sent when its first message is due. A sender that buffers (``Sender.idle``) hands
  over what it holds whenever the publisher is about to wait for the next due time, so
  a publisher on schedule sends each message at once and one behind its schedule sends
  its late messages together. In the latency scenario each body carries its
  intended send time, and the receivers measure latency from it, so a stall anywhere
  (the publisher included) shows up as latency instead of silently slowing the schedule
  down (no coordinated omission).

Progress goes through a shared array of counters (what each publisher sent, what each
receiver received), which the display reads. A receiver stops when every publisher is
done and its group received everything published, or after ``IDLE`` seconds without a
message once every publisher is done (the rest is counted lost), or when the harness
says stop (the run's deadline).
"""

from __future__ import annotations

import os
import queue
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastfanout.bench.adapters import ADAPTERS
from fastfanout.bench.payload import (
    LatencyRecorder,
    SequenceCheck,
    make_bodies,
    make_rows,
    merge,
    percentiles,
)
from fastfanout.bench.processes import JOIN_DEADLINE, START_DEADLINE, spawn, stop_processes
from fastfanout.bench.scenarios import Spec
from fastfanout.interrupts import start_process

IDLE = 5.0
"""Seconds without a message, once every publisher is done, after which a receiver stops."""
RUN_DEADLINE = 600.0
"""Seconds a run may take past its publishers' expected time before it is stopped."""
POLL = 0.05
"""Seconds a receiver waits for messages between checks of the stop conditions."""
START_DELAY_NS = 20_000_000
"""Nanoseconds between setting ``go`` and the first send (every publisher sees it)."""

# slots of the shared array
_GO, _STOP = 0, 1
_HEAD = 2


@dataclass
class RunResult:
    """One run of one spec on one system.

    Attributes:
        system: the adapter's name.
        run: the run's index (from 0).
        published: messages sent by each publisher.
        delivered: per group, messages delivered at least once.
        lost: messages published and never delivered, summed over the groups.
        duplicates: deliveries beyond the first, summed over the groups.
        elapsed: seconds from the first send to the last delivery.
        rate: messages per second each group received (median of the groups), over the
            measured part of the run (after the warm-up).
        publish_rate: messages per second the publishers sent, together.
        latency: latency percentiles in µs (p50 ... p100) and their count, or None.
        extra: the system's own figures of the run (``Adapter.after_run``).
    """

    system: str
    run: int
    published: list[int]
    delivered: list[int]
    lost: int
    duplicates: int
    elapsed: float
    rate: float
    publish_rate: float
    latency: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dict(self.__dict__)


def _slot_received(spec: Spec, group: int, member: int) -> int:
    return _HEAD + 2 * spec.publishers + group * spec.members + member


def _publisher_main(name: str, env: dict[str, Any], spec: Spec, index: int, shared: Any,
                    out: Any) -> None:
    try:
        sender = ADAPTERS[name].sender(env, spec, index)
        out.put(("ready", index))
        deadline = time.monotonic() + START_DEADLINE
        while not shared[_GO]:
            if shared[_STOP] or time.monotonic() > deadline:
                return
            time.sleep(0.001)
        go = shared[_GO]
        sent_slot, done_slot = _HEAD + index, _HEAD + spec.publishers + index
        clock = time.monotonic_ns
        interval = (1e9 * spec.publishers / spec.rate) if spec.rate else 0.0
        offset = (1e9 / spec.rate) * index if spec.rate else 0.0
        end = go + int(spec.duration * 1e9) if spec.duration is not None else None
        limit = spec.count if spec.count is not None else 1 << 31
        stamped = spec.scenario == "latency"
        size, batch, sent = spec.size, spec.batch, 0
        make = make_rows if getattr(sender, "rows", False) else make_bodies   # --api numpy
        idle = getattr(sender, "idle", None)   # a sender that buffers (see Sender)
        while sent < limit and not shared[_STOP]:
            due = go + int(offset + sent * interval)
            if interval:
                if idle is not None and clock() < due:
                    idle()   # ahead of the schedule: what was sent leaves now
                while clock() < due:
                    os.sched_yield()   # spin, giving the core away between checks
            elif sent == 0:
                while clock() < go:
                    os.sched_yield()
            if end is not None and clock() >= end:
                break
            take = min(batch, limit - sent)
            sender.send(make(index, sent, take, size, due if stamped else 0))
            sent += take
            shared[sent_slot] = sent
        sender.close()
        shared[sent_slot] = sent
        shared[done_slot] = 1
        out.put(("publisher", index, {"sent": sent, "end": time.monotonic_ns()}))
    except BaseException as error:
        out.put(("error", f"publisher {index}: {type(error).__name__}: {error}",
                 traceback.format_exc()))


def _receiver_main(name: str, env: dict[str, Any], spec: Spec, group: int, member: int,
                   shared: Any, out: Any) -> None:
    try:
        receiver = ADAPTERS[name].receiver(env, spec, group, member)
        check = SequenceCheck(spec.publishers, spec.expected)
        recorder = None
        out.put(("ready", (group, member)))
        slot = _slot_received(spec, group, member)
        group_slots = [_slot_received(spec, group, m) for m in range(spec.members)]
        done_slots = [_HEAD + spec.publishers + p for p in range(spec.publishers)]
        sent_slots = [_HEAD + p for p in range(spec.publishers)]
        first = last = 0
        mark: tuple[int, int] | None = None
        warm_ns = int(spec.warmup * 1e9)
        idle_deadline = None
        clock = time.monotonic_ns
        while not shared[_STOP]:
            bodies = receiver.poll(POLL)
            now = clock()
            if bodies:
                if recorder is None and spec.scenario == "latency" and shared[_GO]:
                    recorder = LatencyRecorder(shared[_GO] + warm_ns)
                if recorder is not None:
                    recorder.record(bodies)
                if mark is None and shared[_GO] and now >= shared[_GO] + warm_ns:
                    mark = (now, check.received)
                check.record(bodies)
                shared[slot] = check.received
                first = first or now
                last = now
                idle_deadline = None
            if all(shared[s] for s in done_slots):
                total = sum(shared[s] for s in sent_slots)
                if sum(shared[s] for s in group_slots) >= total:
                    break
                if bodies or idle_deadline is None:
                    idle_deadline = idle_deadline or now + int(IDLE * 1e9)
                elif now > idle_deadline:
                    break
        receiver.close()
        out.put(("receiver", (group, member), {
            "received": check.received, "first": first, "last": last, "mark": mark,
            "counts": check.export(),
            "histogram": recorder.encode() if recorder is not None else None}))
    except BaseException as error:
        out.put(("error", f"receiver {group}.{member}: {type(error).__name__}: {error}",
                 traceback.format_exc()))
        if os.environ.get("FASTFANOUT_BENCH_DEBUG"):
            traceback.print_exc()


Progress = Callable[[int, int, int], None]
"""Called about 10 times a second: (messages sent, messages received, received target)."""


def run_once(system: str, spec: Spec, run: int, progress: Progress | None = None
             ) -> RunResult:
    """Run ``spec`` once on ``system``; every child is stopped by the time it returns.

    Raises:
        RuntimeError: a child failed, or the run passed its deadline (one line).
    """
    adapter = ADAPTERS[system]
    ctx = spawn()
    receivers = spec.groups * spec.members
    shared = ctx.Array("q", _HEAD + 2 * spec.publishers + receivers, lock=False)
    out = ctx.Queue()
    children: list[Any] = []
    with adapter.serve(spec) as env:
        try:
            for group in range(spec.groups):
                for member in range(spec.members):
                    children.append(ctx.Process(
                        target=_receiver_main,
                        args=(system, env, spec, group, member, shared, out)))
                    start_process(children[-1])
            _collect(out, receivers, "ready", START_DEADLINE, children)
            adapter.before_publish(env, spec)
            publishers = [ctx.Process(target=_publisher_main,
                                      args=(system, env, spec, index, shared, out))
                          for index in range(spec.publishers)]
            for process in publishers:
                start_process(process)
                children.append(process)
            _collect(out, spec.publishers, "ready", START_DEADLINE, children)
            go = time.monotonic_ns() + START_DELAY_NS
            shared[_GO] = go
            expected_seconds = (spec.duration if spec.duration is not None else
                                spec.expected * spec.publishers / spec.rate if spec.rate
                                else 0.0)
            deadline = time.monotonic() + expected_seconds + RUN_DEADLINE
            results = _finish(out, spec, shared, deadline, children, progress)
        finally:
            shared[_STOP] = 1
            _drain_until_exited(out, children)
            stop_processes(children)
            out.close()
            out.cancel_join_thread()
        extra = adapter.after_run(env, spec)   # the system's own counts, still running
    result = _result(system, spec, run, go, results)
    result.extra.update(extra)
    return result


def _drain_until_exited(out: Any, children: list[Any], deadline: float = JOIN_DEADLINE
                        ) -> None:
    """Read (and drop) what the children still send until they exit (``deadline`` s).

    A child's last ``out.put`` is flushed to its pipe as it exits; a run that ended early
    (Ctrl-C, SIGTERM, an error) no longer reads it, so each child would wait out its whole
    join deadline in ``stop_processes`` (a minute for six children).
    """
    end = time.monotonic() + deadline
    while any(child.pid is not None and child.is_alive() for child in children):
        if time.monotonic() > end:
            return
        try:
            out.get(timeout=0.05)
        except queue.Empty:
            pass
        except (EOFError, OSError, ValueError):   # a torn message of a killed child
            return


def _check_error(message: tuple[Any, ...]) -> None:
    if message[0] == "error":
        raise RuntimeError(message[1])


def _collect(out: Any, count: int, kind: str, timeout: float, children: list[Any]
             ) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            message = out.get(timeout=0.1)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise RuntimeError(f"children not {kind} within {timeout} s") from None
            dead = [child for child in children if child.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a child exited with {dead[0].exitcode}") from None
            continue
        _check_error(message)
        got.append(message)
    return got


def _finish(out: Any, spec: Spec, shared: Any, deadline: float, children: list[Any],
            progress: Progress | None) -> dict[str, Any]:
    publishers: dict[int, Any] = {}
    receivers: dict[tuple[int, int], Any] = {}
    want = spec.publishers + spec.groups * spec.members
    sent_slots = range(_HEAD, _HEAD + spec.publishers)
    received_slots = range(_HEAD + 2 * spec.publishers, len(shared))
    while len(publishers) + len(receivers) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run did not end within its deadline ({RUN_DEADLINE} s "
                            "past its expected time)")
        try:
            message = out.get(timeout=0.1)
        except queue.Empty:
            dead = [child for child in children if child.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a child exited with {dead[0].exitcode}") from None
            message = None
        if message is not None:
            _check_error(message)
            if message[0] == "publisher":
                publishers[message[1]] = message[2]
            elif message[0] == "receiver":
                receivers[message[1]] = message[2]
        if progress is not None:
            sent = sum(shared[s] for s in sent_slots)
            target = (spec.expected if spec.count is None else spec.count) * spec.publishers
            progress(sent, sum(shared[s] for s in received_slots), target * spec.groups)
    return {"publishers": publishers, "receivers": receivers}


def _result(system: str, spec: Spec, run: int, go: int, results: dict[str, Any]
            ) -> RunResult:
    published = [results["publishers"][p]["sent"] for p in range(spec.publishers)]
    publish_end = max(results["publishers"][p]["end"] for p in range(spec.publishers))
    delivered, rates, lost, duplicates, last_all = [], [], 0, 0, go
    histograms = []
    for group in range(spec.groups):
        members = [results["receivers"][(group, m)] for m in range(spec.members)]
        unique, group_lost, group_duplicates = merge([m["counts"] for m in members],
                                                     published)
        delivered.append(unique)
        lost += group_lost
        duplicates += group_duplicates
        last = max(m["last"] for m in members)
        last_all = max(last_all, last)
        marks = [m["mark"] for m in members if m["mark"] is not None]
        received = sum(m["received"] for m in members)
        if spec.warmup and len(marks) == len(members) and last > min(t for t, _ in marks):
            start = min(t for t, _ in marks)
            counted = received - sum(n for _, n in marks)
        else:
            start, counted = go, received
        rates.append(counted / ((last - start) / 1e9) if last > start else 0.0)
        histograms += [m["histogram"] for m in members if m["histogram"]]
    total = sum(published)
    return RunResult(
        system=system, run=run, published=published, delivered=delivered, lost=lost,
        duplicates=duplicates, elapsed=(last_all - go) / 1e9,
        rate=float(statistics.median(rates)),
        publish_rate=total / ((publish_end - go) / 1e9) if publish_end > go else 0.0,
        latency=percentiles(histograms) if histograms else None)
