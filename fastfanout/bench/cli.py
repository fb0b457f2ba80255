"""``fastfanout bench``: the benchmark harness's commands (registered in fastfanout.cli).

``fastfanout bench SCENARIO [options]`` runs a scenario (``fastfanout.bench.scenarios``)
for fastfanout and each available peer, every message size, every topology asked for,
``--runs`` times, shows live progress and a summary table, and writes ``--json`` and
``--plot`` files. ``fastfanout bench compare OLD.json NEW.json`` flags regressions;
``fastfanout bench report FILE.json`` prints a file's table in markdown
(docs/benchmarks.md).

Every wrong input is one line on stderr and a non-zero status (the ``fastfanout`` group
turns click's usage errors into one line); a run that fails is reported in its row and
ends the command with status 1 once the rest ran.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fastfanout.bench.scenarios import (
    APIS,
    DESCRIPTIONS,
    FSYNC,
    RECEIVES,
    SCENARIOS,
    TRANSPORTS,
    Spec,
    topology,
)
from fastfanout.interrupts import sigterm_as_interrupt
from fastfanout.settings import finite

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}
DEFAULT_BATCH = 1000
"""Messages per publish call of the throughput scenarios, unless that is more than
``payload.MAX_BATCH_BYTES`` (then as many as fit, at least one)."""


def parse_size(text: str) -> int:
    """``64``, ``64B``, ``1KiB`` (1024), ``1k``/``1kB`` (1000), ``1MiB``: bytes.

    Raises:
        ValueError: not a size, or outside ``payload.MIN_SIZE``..``payload.MAX_SIZE``.
    """
    from fastfanout.bench.payload import MAX_SIZE, MIN_SIZE

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 64, 1KiB, 16kB)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size > MAX_SIZE:
        raise ValueError(f"{text!r} is above the maximum message size, "
                         f"{MAX_SIZE // 1024**2} MiB ({MAX_SIZE} bytes)")
    if size < MIN_SIZE:
        raise ValueError(f"{text!r} is below the minimum message size, {MIN_SIZE} bytes "
                         "(the sequence/time header)")
    return size


def batch_of(size: int, batch: int | None, latency: bool) -> int:
    """Messages per publish call at ``size`` bytes: ``--batch``, or the scenario's default.

    The default of the throughput scenarios (DEFAULT_BATCH) is cut to
    ``payload.MAX_BATCH_BYTES`` of bodies.

    Raises:
        click.UsageError: ``--batch`` messages of ``size`` bytes are more than
            ``payload.MAX_BATCH_BYTES``.
    """
    from fastfanout.bench.payload import MAX_BATCH_BYTES

    if batch is None:
        return 1 if latency else max(1, min(DEFAULT_BATCH, MAX_BATCH_BYTES // size))
    if batch * size > MAX_BATCH_BYTES:
        raise click.UsageError(
            f"--batch {batch} of {size} bytes is {batch * size} bytes per publish call: "
            f"at most {MAX_BATCH_BYTES // 1024**2} MiB ({MAX_BATCH_BYTES // size} messages "
            "of that size)")
    return batch


class _Size(click.ParamType[int]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class _Finite(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and ``inf``.

    click compares a value with the range's bounds only, and every comparison with
    ``nan`` is false: ``-d nan`` or ``--warmup inf`` passed and failed the run later
    with a conversion error.
    """

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not finite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _peer_names() -> list[str]:
    from fastfanout.bench.adapters import ADAPTERS

    return list(ADAPTERS)


def _systems(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from fastfanout.bench.adapters import ADAPTERS

    names = _peer_names()
    if value.strip() in ("all", ""):
        return [name for name in names if ADAPTERS[name].in_all]
    if value.strip() == "none":
        return ["fastfanout"]
    chosen = ["fastfanout"]
    for name in (part.strip() for part in value.split(",")):
        if name not in names:
            raise click.BadParameter(f"unknown peer {name!r} (one of: {', '.join(names)})",
                                     ctx, param)
        if name not in chosen:
            chosen.append(name)
    return chosen


def _writable(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    folder = os.path.dirname(os.path.abspath(value)) or "."
    if os.path.isdir(value):
        raise click.BadParameter(f"{value!r} is a directory", ctx, param)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write {value!r}: {folder} is not a writable "
                                 "directory", ctx, param)
    return value


def _plot_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    value = _writable(ctx, param, value)
    if value is None:
        return None
    if not value.lower().endswith(".png"):
        raise click.BadParameter(f"{value!r}: the plot is a PNG file (name it *.png)",
                                 ctx, param)
    from fastfanout.bench.plot import plot_unavailable

    reason = plot_unavailable()
    if reason:
        raise click.BadParameter(reason, ctx, param)
    return value


def _hdr_available() -> None:
    try:
        import hdrh  # noqa: F401
    except ImportError:
        raise click.ClickException("hdrhistogram is not installed (pip install "
                                   "'fastfanout[bench]')") from None


def _options(function: F) -> F:
    options = [
        click.option("--size", "-s", "sizes", type=_Size(), multiple=True,
                     help="Message size, repeatable (64, 1KiB, ...; 16 B to 16 MiB). "
                          "[default: 64]"),
        click.option("--count", "-n", type=click.IntRange(min=1), default=None,
                     help="Messages per publisher per run [default: 100000; latency: "
                          "rate x duration]."),
        click.option("--duration", "-d", type=_Finite(min=0, min_open=True),
                     default=None,
                     help="Seconds each publisher publishes (instead of --count) "
                          "[latency default: 5]."),
        click.option("--rate", "-r", type=_Finite(min=0, min_open=True),
                     default=None,
                     help="Messages per second over all publishers, open loop [default: "
                          "as fast as possible; latency: 10000]."),
        click.option("--batch", "-b", type=click.IntRange(min=1, max=100_000), default=None,
                     help="Messages per publish call, at most 64 MiB of them [default: "
                          "1000, fewer above 64 KiB; latency: 1]."),
        click.option("--publishers", "-p", type=click.IntRange(min=1, max=64), default=1,
                     show_default=True, help="Publisher processes (not for latency)."),
        click.option("--transport", "-t", type=click.Choice(TRANSPORTS), default="local",
                     show_default=True,
                     help="fastfanout's transport: local channel (shared memory over an "
                          "ipc socket), ipc socket, tcp on 127.0.0.1 (zmq peers: ipc or tcp)."),
        click.option("--runs", type=click.IntRange(min=1, max=100), default=3,
                     show_default=True, help="Runs of each measurement (the table shows "
                                             "medians, min-max)."),
        click.option("--warmup", type=_Finite(min=0), default=None,
                     help="Seconds at the start of each run not measured [default: 0.2; "
                          "latency: 0.5, and shorter than the run]."),
        click.option("--peers", "systems", default="all", callback=_systems,
                     show_default=True,
                     help="Peers beside fastfanout: all, none, or names separated by commas "
                          "(zmq, zmq-push, mpqueue, redis-pubsub, redis-streams, nats, "
                          "nats-jetstream, faster-fifo, rabbitmq; and bridge: two fastfanout "
                          "brokers through JetStream, not in all)."),
        click.option("--baseline", default="fastfanout", show_default=True,
                     help="The system the ratio column compares with."),
        click.option("--durable", is_flag=True,
                     help="Durable variants: fastfanout with a data directory, Redis with "
                          "an append-only file, JetStream; others skipped."),
        click.option("--fsync", type=click.Choice(FSYNC), default=None,
                     help="The durable variants' fsync policy (with --durable): fastfanout's "
                          "Broker(fsync=...), Redis appendfsync always/everysec/no, "
                          "JetStream sync_interval always/its default [default: always]."),
        click.option("--api", "apis", type=click.Choice(list(APIS)), multiple=True,
                     help="fastfanout's publishing API, repeatable (peers keep theirs): "
                          + "; ".join(f"{name}: {text}" for name, text in APIS.items())
                          + " [default: batch]."),
        click.option("--receive", "receives", type=click.Choice(list(RECEIVES)),
                     multiple=True,
                     help="fastfanout's receiving API, repeatable (peers keep theirs; not "
                          "for stream): "
                          + "; ".join(f"{name}: {text}" for name, text in RECEIVES.items())
                          + " [default: batch]."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     callback=_writable, default=None,
                     help="Write every run, percentiles and the environment to this file."),
        click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
                     callback=_plot_file, default=None,
                     help="Draw throughput bars and latency curves into this PNG file "
                          "(needs matplotlib)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmark fastfanout beside its peers (pyzmq, queues, Redis, NATS, RabbitMQ) on one topology.

    Scenarios: fanout, workqueue, stream, latency; compare two result files with
    `fastfanout bench compare OLD.json NEW.json`. See docs/bench.md.
    """


def _prefetch_option() -> Callable[[F], F]:
    from fastfanout.broker.consumer import MAX_PREFETCH

    return click.option(
        "--prefetch", type=click.IntRange(min=1, max=MAX_PREFETCH), default=None,
        help="Unsettled messages pushed to each consumer (fastfanout's consume(prefetch=), "
             "RabbitMQ's basic.qos) [default: 16000, RabbitMQ 2000; latency: 16].")


def _scenario_command(scenario: str) -> click.Command:
    extra: list[Callable[[F], F]] = []
    if scenario == "fanout":
        extra = [click.option("--queues", "-q", type=click.IntRange(min=1, max=64),
                              multiple=True, help="Queues subscribed to the topic, "
                                                  "repeatable [default: 1]."),
                 click.option("--consumers", "-c", type=click.IntRange(min=1, max=64),
                              default=1, show_default=True,
                              help="Competing consumers per queue.")]
    elif scenario == "stream":
        extra = [click.option("--listeners", "-l", type=click.IntRange(min=1, max=64),
                              multiple=True, help="Stream listeners, repeatable "
                                                  "[default: 1].")]
    else:
        extra = [click.option("--consumers", "-c", type=click.IntRange(min=1, max=64),
                              multiple=True, help="Competing consumers, repeatable "
                                                  "[default: 1].")]
    if scenario != "stream":
        extra.append(_prefetch_option())

    def command(**options: Any) -> None:
        _run(scenario, options)

    command.__doc__ = f"{DESCRIPTIONS[scenario]}."
    function: Any = command
    for option in reversed(extra):
        function = option(function)
    return click.command(scenario)(_options(function))


def _grid(scenario: str, options: dict[str, Any]) -> list[tuple[int, int, int]]:
    publishers = options["publishers"]
    if scenario == "fanout":
        return [topology(scenario, publishers, q, options["consumers"], 1)
                for q in options["queues"] or (1,)]
    if scenario == "stream":
        return [topology(scenario, publishers, 1, 1, listeners)
                for listeners in options["listeners"] or (1,)]
    return [topology(scenario, publishers, 1, c, 1) for c in options["consumers"] or (1,)]


def _specs(scenario: str, options: dict[str, Any]) -> list[Spec]:
    latency = scenario == "latency"
    count, duration, rate = options["count"], options["duration"], options["rate"]
    if count is not None and duration is not None:
        raise click.UsageError("give --count or --duration, not both")
    if latency:
        rate = rate or 10_000.0
        if count is None and duration is None:
            duration = 5.0
        if options["publishers"] != 1:
            raise click.UsageError("the latency scenario has one publisher (no --publishers)")
    elif count is None and duration is None:
        count = 100_000
    if options["baseline"] not in options["systems"]:
        raise click.UsageError(f"--baseline {options['baseline']!r} is not among the "
                               f"systems run ({', '.join(options['systems'])})")
    if options["fsync"] is not None and not options["durable"]:
        raise click.UsageError("--fsync is the durable variants' policy: give --durable")
    receives = list(dict.fromkeys(options["receives"] or ("batch",)))
    if scenario == "stream" and receives != ["batch"]:
        raise click.UsageError("stream listeners have no --receive (they listen)")
    warmup = options["warmup"] if options["warmup"] is not None else (0.5 if latency else 0.2)
    if latency:   # its percentiles are of the messages due after the warm-up
        seconds = duration if duration is not None else count / rate
        if (seconds - warmup) * rate < 1:   # no message due after the warm-up
            given = "--duration" if duration is not None else "--count / --rate"
            raise click.UsageError(
                f"the latency run lasts {seconds:g} s ({given}): it must be longer than "
                f"the warm-up, --warmup {warmup:g} s, by one message at least "
                f"({1 / rate:g} s at --rate {rate:g}); nothing would be measured")
    sizes = sorted(set(options["sizes"] or (64,)))
    batches = {size: batch_of(size, options["batch"], latency) for size in sizes}
    return [Spec(scenario=scenario, size=size, count=count, duration=duration, rate=rate,
                 batch=batches[size], publishers=p, groups=g, members=m,
                 transport=options["transport"], warmup=warmup, durable=options["durable"],
                 api=api, receive=receive, fsync=options["fsync"] or "always",
                 prefetch=options.get("prefetch"))
            for size in sizes
            for p, g, m in _grid(scenario, options)
            for api in dict.fromkeys(options["apis"] or ("batch",))
            for receive in receives]


def _cell(spec: Spec) -> tuple[Any, ...]:
    """What the systems of one row group share: everything but fastfanout's APIs."""
    return (spec.size, spec.publishers, spec.groups, spec.members)


def _run(scenario: str, options: dict[str, Any]) -> None:
    from rich.console import Console

    from fastfanout.bench.adapters import ADAPTERS
    from fastfanout.bench.display import Live, skipped_lines, summary_table
    from fastfanout.bench.results import (
        Measurement,
        document,
        set_ratios,
        size_label,
        write,
    )
    from fastfanout.bench.runner import run_once

    specs = _specs(scenario, options)
    _hdr_available()
    console = Console(stderr=True)
    measurements: list[Measurement] = []
    failed = False
    # peers keep their own API: they run once per cell, beside its first spec
    first: dict[tuple[Any, ...], Spec] = {}
    for spec in specs:
        first.setdefault(_cell(spec), spec)
    with Live(console) as live, sigterm_as_interrupt():
        for spec in specs:
            for name in options["systems"]:
                if name != "fastfanout" and first[_cell(spec)] is not spec:
                    continue
                adapter = ADAPTERS[name]
                item = Measurement(spec, name, adapter.label_of(spec))
                measurements.append(item)
                item.skipped = adapter.unavailable(spec)
                if item.skipped:
                    continue
                for run in range(options["runs"]):
                    label = f"{scenario} {size_label(spec.size)} {item.label} run {run + 1}"
                    try:
                        with live.run(label) as progress:
                            item.runs.append(run_once(name, spec, run, progress))
                    except KeyboardInterrupt:
                        raise
                    except Exception as error:   # one line per failed run, then the rest
                        failed = True
                        text = " ".join(str(error).split())
                        if type(error) is not RuntimeError:
                            text = f"{type(error).__name__}: {text}"
                        item.skipped = f"failed: {text}"
                        item.runs.clear()
                        live.progress.console.print(f"{adapter.label}: {item.skipped}")
                        break
    set_ratios(measurements, options["baseline"])
    output = Console()
    if not output.is_terminal:
        output = Console(width=140)
    output.print(summary_table(measurements, options["baseline"]))
    for line in skipped_lines(measurements):
        click.echo(line)
    command = shlex.join(["fastfanout", *sys.argv[1:]])
    if options["json_path"]:
        data = document(measurements, command)
        data["options"] = {key: list(value) if isinstance(value, tuple) else value
                           for key, value in options.items()}
        write(options["json_path"], data)
        click.echo(f"wrote {options['json_path']}")
    if options["plot_path"]:
        from fastfanout.bench.plot import plot

        plot(measurements, options["plot_path"])
        click.echo(f"wrote {options['plot_path']}")
    if failed:
        raise click.ClickException("a run failed (see its \"skipped ...: failed\" line)")


for _name in SCENARIOS:
    bench.add_command(_scenario_command(_name))


@bench.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--threshold", type=_Finite(min=0, max=10), default=0.10,
              show_default=True,
              help="Relative change below which a difference is noise (0.10: 10%).")
def compare(old: str, new: str, threshold: float) -> None:
    """Compare two --json files; exit 1 when NEW regressed beyond the noise threshold.

    A file that cannot be read or is no results file, or two files with no measurement in
    common, exit 2 (wrong input), never 1.
    """
    from fastfanout.bench.results import compare as changes_of

    before, after = _results(old), _results(new)
    changes = changes_of(before, after, threshold)
    if not changes:
        # wrong input, status 2: status 1 says NEW regressed
        raise click.UsageError("the two files have no measurement in common")
    for change in changes:
        mark = "REGRESSION" if change.regression else "ok"
        click.echo(f"{mark:10} {change.key}: {change.old:,.1f} -> {change.new:,.1f} "
                   f"{change.unit} ({change.change:+.1%})")
    regressions = sum(change.regression for change in changes)
    if regressions:
        raise click.ClickException(f"{regressions} regression(s) beyond "
                                   f"{threshold:.0%} (and the old runs' spread)")
    click.echo(f"no regression beyond {threshold:.0%}")


@bench.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def report(files: tuple[str, ...]) -> None:
    """Print the table of each --json FILE in markdown (what docs/benchmarks.md shows)."""
    from fastfanout.bench.markdown import markdown

    for number, path in enumerate(files):
        click.echo(("\n" if number else "") + markdown(_results(path)))


def _results(path: str) -> dict[str, Any]:
    """A results file for ``compare`` and ``report``, or one line saying what is wrong.

    What both commands read of its measurements is read here once: until 2026-12-05 a
    measurement without its ``key``, or a number in place of one, ended them with a
    KeyError or TypeError traceback.
    """
    from fastfanout.bench.markdown import markdown
    from fastfanout.bench.results import compare as changes_of
    from fastfanout.bench.results import load

    # a file that is not one is wrong input (status 2, as click's own usage errors):
    # compare's status 1 says that NEW regressed, and a CI step must not read a mistyped
    # path as a slowdown
    try:
        document = load(path)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        changes_of(document, document)
        markdown(document)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise click.UsageError(
            f"{path} has a malformed measurement ({type(error).__name__}: {error}); is it "
            f"a --json file of fastfanout bench?") from None
    return document
