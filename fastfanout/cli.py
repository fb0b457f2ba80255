"""The ``fastfanout`` command line: serve a broker, and talk to one.

Every command but ``serve`` and ``demo`` is a thin client call (``fastfanout.client``);
``--endpoint`` (or ``$FASTFANOUT_ENDPOINT``) picks the broker, the per-user ipc socket by
default.

Invariants: a mistake — a malformed option, a bad config file, an endpoint that cannot be
bound or reached, an error from the broker — ends the command with one line on stderr
that names the problem and the way out, and a non-zero exit status (2 for a malformed
command line, 1 for the rest); never a traceback. A command against an endpoint where no
broker runs fails within a few seconds: at once when the ipc socket file does not exist,
after the client's handshake timeout otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any, Final, NoReturn, TypeVar

import click
from click.core import ParameterSource

from fastfanout import __version__
from fastfanout.errors import FastFanoutError, NotFound
from fastfanout.interrupts import (
    hold_stop_signals,
    release_stop_signals,
    sigterm_as_interrupt,
    stop_signals_held,
)
from fastfanout.semantics.replies import DEFAULT_REQUEST_TIMEOUT, MAX_REQUEST_TIMEOUT
from fastfanout.server.config import LOG_LEVELS, endpoint_problem, load_config, server_options
from fastfanout.settings import finite
from fastfanout.stats import SUBSCRIPTION_DROP_REASONS

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

IPC_PATH_MAX = 107
"""Longest ipc socket path, in bytes (``sockaddr_un.sun_path`` less its NUL on Linux)."""
IDLE_CHECK: Final = 2.0
"""Seconds ``fastfanout sub`` waits for a stream message before it asks its broker
whether it is still there (a stream alone cannot tell a quiet broker from a dead one)."""
ENDPOINT_HELP = ("Broker endpoint: ipc://PATH or tcp://HOST:PORT (default: "
                 "$FASTFANOUT_ENDPOINT, else the per-user ipc socket).")


STOPPED_CLEANLY: Final = frozenset({"serve", "worker", "sub", "receive", "metrics",
                                     "top"})
"""The commands that a stop signal (SIGTERM, SIGINT, SIGHUP) ends with exit 0, the
client closed: each runs until stopped, or waits (``receive --wait``). Any other command
a stop signal interrupts prints ``aborted`` and exits 1."""

PRINT_NOTHING_NEEDED: Final = frozenset({"serve", "worker", "metrics"})
"""The commands whose work is not what they print (their log goes to stderr): they run
with standard output closed; every other command refuses to (its output would vanish)."""

_invoked: list[str | None] = [None]
"""The command being run (set by the group's callback, read when it was aborted)."""


_NO_ARGS_IS_HELP: Final[tuple[type[Exception], ...]] = tuple(
    getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name))   # click 8.2+; older ones print the help
"""What click raises for a group run without a command (it means: show the help)."""


class _Commands(click.Group):
    """A group whose every failure prints one line (click's usage errors print four)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            status = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as error:
            if isinstance(error, _NO_ARGS_IS_HELP) and error.ctx is not None:
                # `fastfanout` (or a group) alone asks what there is: the help, whole
                # (it came squashed into one "error:" line until 2026-12-06)
                click.echo(error.ctx.get_help())
                sys.exit(0)
            where = f" (see: {error.ctx.command_path} --help)" if error.ctx else ""
            _exit_with(f"error: {error.format_message()}{where}", error.exit_code)
        except click.ClickException as error:
            _exit_with(f"error: {error.format_message()}", error.exit_code)
        except click.Abort as error:
            if (isinstance(error.__cause__, KeyboardInterrupt)
                    and _invoked[0] in STOPPED_CLEANLY):
                sys.exit(0)   # a stop signal as it started: stopped, as asked
            _exit_with("aborted", 1)
        except OSError as error:
            # the output could not be written (`> /dev/full`: ENOSPC), or another
            # failure of the system no command turned into its own line: one line
            _quiet_stdout()   # what is left unwritten would fail again at exit
            _exit_with(f"error: {error.strerror or error}"
                       + (f": {error.filename}" if error.filename else ""), 1)
        sys.exit(status if isinstance(status, int) else 0)


    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; its output's reader gone (``| head``, ``| true``) ends it.

        Exit 0 with no word, as ``-n N`` ends a listing: click's own handling (exit 1,
        nothing said) failed such a pipeline under ``pipefail`` until 2026-12-07.
        Commands whose output is a record of what they did (``receive --ack``) say so
        themselves before this.
        """
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(0)


def _counted(count: int, one: str, many: str | None = None) -> str:
    """``1 message``, ``2 messages`` (``many``: the plural when not ``one`` + s)."""
    return f"{count} {one if count == 1 else many or one + 's'}"


def _exit_with(line: str, status: int) -> NoReturn:
    click.echo(" ".join(line.split()), err=True)
    sys.exit(status)


MAX_SUBSCRIPTION_ID: Final = 2**63 - 1
"""The largest subscription id (a signed 64-bit integer; a broker counts them from 1)."""


class _SubscriptionId(click.ParamType[int]):
    """A subscription id: an integer from 0 to ``MAX_SUBSCRIPTION_ID``.

    click's ``IntRange(min=0)`` said only "'abc' is not a valid integer range." and let
    an id past 64 bits reach the client.
    """

    name = "subscription_id"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        text = str(value).strip()
        if text.startswith("-") and not text[1:].isdigit():
            # unsubscribe takes unknown options as its argument (to read "-1"): one
            # mistyped ("--endpont") is still an unknown option, not an id
            raise click.NoSuchOption(text, ctx=ctx)
        try:
            number = int(text, 10)
        except ValueError:
            number = -1
        if not 0 <= number <= MAX_SUBSCRIPTION_ID:
            self.fail(f"{value!r}: a subscription id must be an integer from 0 to "
                      f"{MAX_SUBSCRIPTION_ID:,} (fastfanout list-subscriptions shows them)",
                      param, ctx)
        return number


class _Endpoint(click.ParamType[str]):
    """``ipc://PATH`` or ``tcp://HOST:PORT``, checked for form (not reachability)."""

    name = "endpoint"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        problem = endpoint_problem(str(value))
        if problem is not None:
            self.fail(f"{value!r}: {problem}", param, ctx)
        return str(value)


class _Time(click.ParamType[float]):
    """An absolute time: ISO 8601 (``2026-05-01T12:00:00Z``, local without a zone) or seconds."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = datetime.fromisoformat(str(value)).astimezone().timestamp()
            except ValueError:
                self.fail(f"{value!r} is neither an ISO 8601 time "
                          f"(2026-05-01T12:00:00Z) nor Unix seconds", param, ctx)
        if not finite(seconds):
            self.fail(f"{value!r} is not a finite time", param, ctx)
        return seconds


class _Seconds(click.FloatRange):
    """A ``FloatRange`` that refuses NaN (click's lets it through: no comparison fails)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


ENDPOINT = _Endpoint()

endpoint_option = click.option(
    "--endpoint", "-e", envvar="FASTFANOUT_ENDPOINT", default=None, type=ENDPOINT,
    show_envvar=True, help=ENDPOINT_HELP)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"fastfanout.{param.name}"] = value
    return value


def _client_options(function: F) -> F:
    """Add ``--endpoint`` and the CURVE keys of a broker that requires them.

    The keys are read by ``_connected`` (``ctx.meta``), not passed to the command.
    """
    function = click.option(
        "--curve-client-key", type=click.Path(exists=True, dir_okay=False), default=None,
        expose_value=False, callback=_remember, envvar="FASTFANOUT_CURVE_CLIENT_KEY",
        show_envvar=True, help="With --curve-broker-key: this client's zmq.auth secret "
        "certificate (.key_secret), one the broker admits (default: a fresh key pair, "
        "enough for a broker run with --curve-clients '*').")(function)
    function = click.option(
        "--curve-broker-key", type=click.Path(exists=True, dir_okay=False), default=None,
        expose_value=False, callback=_remember, envvar="FASTFANOUT_CURVE_BROKER_KEY",
        show_envvar=True, help="The broker's public certificate (.key): talk CURVE to a "
        "broker run with --curve-secret-key.")(function)
    return endpoint_option(function)


def _client_curve() -> Any:
    """The CURVE keys the command line gave (``_client_options``), or None."""
    from fastfanout.transport.sockets import client_curve

    context = click.get_current_context(silent=True)
    meta = context.meta if context is not None else {}
    broker_key = meta.get("fastfanout.curve_broker_key")
    client_key = meta.get("fastfanout.curve_client_key")
    if client_key is not None and broker_key is None:
        raise click.UsageError("--curve-client-key needs --curve-broker-key (the broker's "
                               "public .key certificate)")
    if broker_key is None:
        return None
    try:
        return client_curve(broker_key, client_key)
    except FastFanoutError as error:
        _fail(error)


def _hint(error: FastFanoutError) -> str:
    if isinstance(error, NotFound):
        kind = str(error).split(" ", 1)[0]
        if kind in ("topic", "queue", "subscription"):
            return f"; fastfanout list-{kind}s shows those that exist"
    if error.code == "broken" and "start one with fastfanout serve" not in str(error):
        return (" If not, start one (fastfanout serve), or point --endpoint "
                "(or $FASTFANOUT_ENDPOINT) at the one running." if str(error).endswith("?")
                else "; is a broker running there? Start one with fastfanout serve, or "
                "point --endpoint (or $FASTFANOUT_ENDPOINT) at the one running")
    return ""


def _fail(error: FastFanoutError) -> NoReturn:
    _exit_with(f"error [{error.code}]: {error}{_hint(error)}", 1)


def _resolve(endpoint: str | None) -> str:
    from fastfanout.runtime import default_endpoint

    try:
        return endpoint or default_endpoint()
    except FastFanoutError as error:
        _fail(error)


def _served(endpoint: str | None) -> str:
    """The endpoint a command talks to (resolved).

    Exits at once (one line) when an ipc socket shows no broker can be listening there.
    """
    from fastfanout.runtime import ipc_occupant, ipc_problem

    endpoint = _resolve(endpoint)
    problem = ipc_problem(endpoint)
    if problem and ipc_occupant(endpoint):   # a file of the user's: no broker goes there
        _exit_with(f"error: no broker at {endpoint} ({problem}); point --endpoint (or "
                   f"$FASTFANOUT_ENDPOINT) at a broker's socket", 1)
    if problem:
        _exit_with(f"error: no broker at {endpoint} ({problem}); start one with "
                   f"fastfanout serve --endpoint {endpoint}, or point --endpoint (or "
                   f"$FASTFANOUT_ENDPOINT) at the one running", 1)
    return endpoint


@contextmanager
def _connected(endpoint: str | None) -> Iterator[Any]:
    """A client of the broker at ``endpoint``; a broker error ends the command (exit 1)."""
    from fastfanout.client import connect
    from fastfanout.transport import local_channel

    endpoint = _served(endpoint)
    curve = _client_curve()
    # The local channel's warning of a request too large for its ring (it goes over the
    # socket instead) advises connect(ring_bytes=...): advice for a program, which this
    # command's user cannot follow; and it made a refused publish two stderr lines.
    # One request over the socket costs a command nothing worth a line.
    local_channel.log.setLevel(logging.ERROR)
    try:
        with connect(endpoint, timeout=5.0, curve=curve) as client:
            yield client
    except FastFanoutError as error:
        _fail(error)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="fastfanout")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """fastfanout: an in-host SNS+SQS-style message broker.

    Every command but serve talks to a running broker: the one at --endpoint, else at
    $FASTFANOUT_ENDPOINT, else at the per-user ipc socket that a plain `fastfanout serve`
    binds.

    SIGTERM, SIGINT and SIGHUP stop serve, worker, sub, receive, metrics and top cleanly
    (exit 0); any other command they interrupt says "aborted" (exit 1).
    """
    # The entry point held the stop signals from its first line (fastfanout.entry):
    # serve's own handlers take them over (fastfanout.server.loop.serve); any other
    # command handles them from here on, as KeyboardInterrupt.
    _invoked[0] = ctx.invoked_subcommand
    if sys.stdout is None and ctx.invoked_subcommand not in PRINT_NOTHING_NEEDED:
        # started with descriptor 1 closed (`>&-`): what it prints would vanish and it
        # would exit 0 (until 2026-12-07)
        _exit_with("error: standard output is closed: this command has nothing to print "
                   "to (redirect it to a file, or to /dev/null to discard it)", 1)
    if stop_signals_held() and ctx.invoked_subcommand != "serve":
        release_stop_signals()


# -- serve ---------------------------------------------------------------------------------


@cli.command()
@endpoint_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file of broker settings (keys: see docs/configuration.md); "
                   "options given here win over it.")
@click.option("--log-level", default=None, type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Logging threshold (default INFO).")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=None,
              help="Largest request the broker answers, all frames together (bytes; default "
                   "67108864 = 64 MiB); bigger ones are refused with request_too_large.")
@click.option("--curve-secret-key", type=click.Path(exists=True, dir_okay=False),
              help="The broker's zmq.auth secret certificate (.key_secret): turns on "
                   "CURVE; required to bind tcp beyond loopback.")
@click.option("--curve-clients", metavar="DIR|*", default=None,
              help="With CURVE: directory of allowed clients' public certificates (*.key), "
                   "or '*' to allow any client that knows the broker's public key.")
@click.option("--slow-listener", type=click.Choice(["drop", "wait"]), default=None,
              help="Policy for stream listeners that fall behind (default drop).")
@click.option("--hold-timeout", type=_Seconds(min=0), default=None,
              help="Seconds a publish to a full overflow=hold queue is held before it is "
                   "answered with queue_full (default 30; 0: at once).")
@click.option("--local-channels/--no-local-channels", default=None,
              help="Let clients on this host talk through shared memory (ipc:// only; "
                   "default on).")
@click.option("--deliver-by-reference/--no-deliver-by-reference", default=None,
              help="Hand a local consumer a push that is one whole publish frame of a "
                   "local producer as a reference to it, not a copy (default on; "
                   "docs/arrays.md).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Directory of the broker's journal: topics, queues, subscriptions and "
                   "messages of durable queues survive a restart (default: "
                   "$XDG_STATE_HOME/fastfanout/<name>, else ~/.local/state/fastfanout/<name>, "
                   "one <name> per endpoint).")
@click.option("--in-memory", is_flag=True, default=None,
              help="Keep nothing on disk: a restart loses every topic, queue and message.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default=None,
              help="When the journal reaches the disk (default always: a publish is "
                   "confirmed once on disk; interval: every --fsync-interval seconds; "
                   "never: the OS decides). Every policy survives kill -9; only always "
                   "survives power loss.")
@click.option("--fsync-interval", type=_Seconds(0.001, 3600), default=None,
              help="Seconds between syncs with --fsync interval (default 1).")
@click.option("--max-disk-bytes", type=click.IntRange(min=65536), default=None,
              help="Journal bytes at which publishes are refused with store_full until "
                   "consumers settle messages (at least 65536; default: no limit but "
                   "the disk).")
@click.option("--max-topics", type=click.IntRange(1, 2**31 - 1), default=None,
              help="Most topics the broker holds; one more is refused with "
                   "limit_exceeded (default 100000).")
@click.option("--max-queues", type=click.IntRange(1, 2**31 - 1), default=None,
              help="Most queues the broker holds; one more is refused with "
                   "limit_exceeded (default 100000).")
@click.option("--max-subscriptions-per-topic", type=click.IntRange(1, 2**31 - 1),
              default=None,
              help="Most subscriptions feeding one topic (its own and matching "
                   "patterns); one more is refused with limit_exceeded (default 100000).")
@click.option("--max-pattern-subscriptions", type=click.IntRange(1, 2**31 - 1),
              default=None,
              help="Most pattern subscriptions the broker holds, matching topics or not; "
                   "one more is refused with limit_exceeded (default 100000).")
@click.option("--bridge", type=click.Path(dir_okay=False), default=None,
              help="Rule file of the NATS JetStream bridge run beside the broker (export "
                   "and import rules: see docs/bridge.md); needs nats-py.")
@click.option("--metrics", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics from this process "
                   "(docs/metrics.md; no authentication: keep it on loopback, "
                   "127.0.0.1:9771, unless other hosts scrape it).")
@click.option("--definitions", type=click.Path(dir_okay=False), default=None,
              help="A definitions document (fastfanout definitions export) to import as "
                   "the broker starts: what it lacks is created; a conflict with what it "
                   "holds fails the start.")
def serve(config_path: str | None, **given: Any) -> None:
    """Run a broker until SIGTERM, SIGINT or SIGHUP (then exit 0).

    It binds --endpoint for commands and a stream endpoint beside it: PATH.stream for
    ipc://PATH, port PORT+1 for tcp://HOST:PORT (so both must be free). It keeps its
    state in --data-dir (by default a directory of the endpoint's own under the per-user
    state directory) and recovers it at start; --in-memory keeps nothing.
    """
    from fastfanout.errors import InvalidArgument, TransportError
    from fastfanout.runtime import default_data_dir_made
    from fastfanout.server.loop import serve as run_server
    from fastfanout.transport.sockets import load_curve_keys

    if given["in_memory"] and given["data_dir"] is not None:
        # a malformed command line (exit 2), as click's own checks are; the same
        # conflict in the file is the file's error (load_config, exit 1)
        raise click.UsageError("--in-memory and --data-dir exclude each other: a broker "
                               "keeps its data either in memory or in a data directory")
    try:
        config = load_config(config_path, given)
    except InvalidArgument as error:
        _exit_with(f"error: {error}", 1)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = server_options(config)
    endpoint = options["endpoint"] = _resolve(config.endpoint)
    stream = options.get("stream_endpoint") or (
        f"{endpoint}.stream" if endpoint.startswith("ipc://") else "")
    for value in (endpoint, stream):
        if value.startswith("ipc://"):
            path = value[len("ipc://"):]
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                _exit_with(f"error: cannot bind {value}: directory {directory} does not "
                           f"exist; create it (mkdir -p {directory}) or choose another "
                           f"--endpoint", 1)
            if len(os.fsencode(path)) > IPC_PATH_MAX:
                _exit_with(f"error: cannot bind {value}: its path is {len(os.fsencode(path))} "
                           f"bytes, over the {IPC_PATH_MAX} an ipc socket may have (the "
                           f"stream socket adds '.stream'); choose a shorter --endpoint", 1)
    if config.curve_secret_key:
        try:
            options["curve"] = load_curve_keys(config.curve_secret_key)
        except (OSError, ValueError) as error:   # TransportError is an OSError
            problem = (f"{error} (a zmq.auth .key_secret certificate, made by "
                       f"zmq.auth.create_certificates)")
            if given["curve_secret_key"]:   # a usage error, as click's own checks are
                raise click.BadParameter(problem, param_hint="--curve-secret-key") from None
            _exit_with(f"error: {config_path}: curve_secret_key: {problem}", 1)
    try:
        if config.in_memory:
            for key in ("fsync", "fsync_interval", "max_disk_bytes"):
                options.pop(key, None)
        elif config.data_dir is None:
            data_dir, made = default_data_dir_made(endpoint)
            options.update(data_dir=str(data_dir), made=made)
        companions = []
        if config.definitions is not None:   # first: the bridge's rules may need them
            companions.append(_definitions_companion(config.definitions))
        if config.bridge is not None:
            companions.append(_bridge_companion(config.bridge, endpoint, config.in_memory))
        with ExitStack() as beside:
            if config.metrics is not None:
                companions.append(beside.enter_context(_metrics_companion(
                    config.metrics, endpoint, config_path if given["metrics"] is None
                    else None)))
            sys.exit(run_server(companion=_together(companions), **options))
    except TransportError as error:
        if endpoint.startswith("tcp://") and "stream_endpoint" not in options:
            port = int(endpoint.rpartition(":")[2])
            hint = (f"the broker needs ports {port} and {port + 1} (its streams) free: "
                    f"choose other ports with --endpoint, or stop the program holding them")
        elif endpoint.startswith("tcp://"):
            hint = "choose free ports with --endpoint, or stop the program holding them"
        elif "binding would delete it" in str(error):
            hint = ""   # the error says what to do
        else:
            hint = "choose a writable directory with --endpoint"
        _exit_with(f"error [{error.code}]: {error}" + (f"; {hint}" if hint else ""), 1)
    except FastFanoutError as error:
        _fail(error)
    except OSError as error:
        _exit_with(f"error: cannot serve {endpoint}: {error.strerror}"
                   + (f": {error.filename}" if error.filename else ""), 1)


def _definitions_companion(path: str) -> Callable[[Any], Callable[[], None]]:
    """Read and check the document now, before anything binds.

    The companion imports it into the server's broker once bound, before the loop
    serves anyone.
    """
    from fastfanout.definitions import check_definitions, import_definitions
    from fastfanout.errors import InvalidArgument

    try:
        with open(path, "rb") as file:
            document = file.read()
        check_definitions(document)
    except OSError as error:
        _exit_with(f"error: cannot read the definitions {path}: {error.strerror}", 1)
    except InvalidArgument as error:
        _exit_with(f"error: {path}: {error}", 1)

    def start(server: Any) -> Callable[[], None]:
        try:
            result = import_definitions(server.broker, document)
        except FastFanoutError as error:   # the same error, naming the file
            error.args = (f"{path}: {error}",)
            raise
        logging.getLogger("fastfanout.definitions").info(
            "definitions %s: %d created, %d unchanged", path, len(result.created),
            result.unchanged)
        return lambda: None

    return start


def _together(starts: list[Callable[[Any], Callable[[], None]]]
              ) -> Callable[[Any], Callable[[], None]] | None:
    """One companion of ``serve`` running ``starts`` in order (their stops in reverse)."""
    if not starts:
        return None

    def start(server: Any) -> Callable[[], None]:
        stops = [each(server) for each in starts]

        def stop() -> None:
            for each in reversed(stops):
                each()
        return stop

    return start


def _metrics_address(address: str, option: str, config_path: str | None = None
                     ) -> tuple[str, int]:
    """``HOST:PORT`` of ``option`` (or the config file's ``metrics``), or a one-line end."""
    from fastfanout.errors import InvalidArgument
    from fastfanout.metrics import parse_address

    try:
        return parse_address(address)
    except InvalidArgument as error:
        if config_path is None:
            raise click.BadParameter(str(error), param_hint=option) from None
        _exit_with(f"error: {config_path}: metrics: {error}", 1)


def _listen_for_metrics(source: Any, host: str, port: int, address: str, option: str
                        ) -> Any:
    """A metrics endpoint of ``source`` listening now, or a one-line end (a busy port)."""
    from fastfanout.metrics import MetricsServer

    try:
        return MetricsServer(source, host, port)
    except OSError as error:
        _exit_with(f"error: cannot listen on {address} for metrics: {error.strerror}; "
                   f"choose another {option} address, or stop the program holding it", 1)


@contextmanager
def _metrics_companion(address: str, endpoint: str, config_path: str | None
                       ) -> Iterator[Callable[[Any], Callable[[], None]]]:
    """Listen for scrapes now, so a busy port fails before the broker binds.

    The companion points the scrapes at the server once it is bound. The endpoint
    closes when ``serve`` ends, however it ends.
    """
    from fastfanout.metrics import ServedBroker

    host, port = _metrics_address(address, "--metrics", config_path)
    served = ServedBroker(endpoint)
    metrics = _listen_for_metrics(served, host, port, address, "--metrics")

    def start(server: Any) -> Callable[[], None]:
        served.attach(server.companion_curve())
        logging.getLogger("fastfanout.metrics").info("metrics at %s", metrics.url)
        return served.close

    try:
        yield start
    finally:
        metrics.close()
        served.close()


def _bridge_companion(path: str, endpoint: str, in_memory: bool
                      ) -> Callable[[Any], Callable[[], None]]:
    """Check the bridge's rule file and client now; what starts the bridge once bound."""
    from fastfanout.bridges import Bridge, bridge_unavailable, load_rules
    from fastfanout.errors import InvalidArgument
    from fastfanout.runtime import data_dir_name

    try:
        rules = load_rules(path)
    except InvalidArgument as error:
        _exit_with(f"error: {error}", 1)
    reason = bridge_unavailable(rules)
    if reason:
        _exit_with(f"error: --bridge {path}: {reason}", 1)
    # Nats-Msg-Id is IDENTITY:MESSAGE_ID: the default identity names the host and the
    # endpoint; message ids restart at 1 in memory, so such a broker adds its start time.
    identity = f"{socket.gethostname()}-{data_dir_name(endpoint)}"
    if in_memory:
        identity += f"-{int(time.time() * 1000)}"

    def start(server: Any) -> Callable[[], None]:
        # Beside a CURVE broker the bridge's own clients use a key pair made now and
        # admitted by the server in memory (never on disk): see docs/bridge.md.
        curve = server.companion_curve()
        bridge = Bridge(rules, endpoint, identity=identity, durable=not in_memory,
                        client_options=None if curve is None else {"curve": curve},
                        switch_interval=None).host(server)
        server.stats_sources["bridge"] = bridge.stats
        return bridge.stop

    return start


# -- messages ------------------------------------------------------------------------------


_JSON_INT: Final = re.compile(r"-?(?:0|[1-9][0-9]*)")
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _attribute_value(value: str) -> Any:
    """An ``--attr`` value: a number, or a string.

    A number written as JSON writes one (``12``, ``-3.5``, ``1e3``) is a number; anything
    else, and a value in double quotes (``"007"``, the quotes dropped), is a string.

    Python's ``int()``/``float()`` took ``007``, ``1_000``, `` 5``, ``٣`` (an Arabic-Indic
    digit) and ``NaN``: a string of the user's came out a number, or refused, until
    2026-12-07.
    """
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if _JSON_INT.fullmatch(value):
        return int(value)
    if _JSON_NUMBER.fullmatch(value):
        return float(value)
    return value


def _parse_attributes(pairs: tuple[str, ...]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} must be NAME=VALUE", param_hint="--attr")
        if name in attributes:
            raise click.BadParameter(f"{name!r} is given twice", param_hint="--attr")
        attributes[name] = _attribute_value(value)
    return attributes


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _body_fields(body: bytes) -> dict[str, Any]:
    try:
        return {"body": body.decode()}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}


def _text_body(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return f"<{len(body)} bytes, not UTF-8: see them with --raw or --json>"


def _describe(fields: dict[str, Any], message: Any) -> str:
    """One message as ``key=value ... body`` (the body as text, as it is)."""
    if message.group_id is not None:
        fields["group_id"] = message.group_id
    if message.priority:
        fields["priority"] = message.priority
    if message.attributes:
        fields["attributes"] = json.dumps(message.attributes, default=_json_value,
                                          ensure_ascii=False, separators=(",", ":"))
    dead_letter = getattr(message, "dead_letter", None)
    if dead_letter is not None:
        fields["dead_letter"] = (f"{dead_letter.reason}:{dead_letter.source_queue}"
                                 f"@{dead_letter.receive_count}")
    head = " ".join(f"{key}={value}" for key, value in fields.items())
    return f"{head} {_text_body(message.body)}"


def _as_json(fields: dict[str, Any], message: Any) -> str:
    fields.update(id=message.id, timestamp=message.timestamp, group_id=message.group_id,
                  dedup_id=message.dedup_id, priority=message.priority,
                  attributes=message.attributes)
    if hasattr(message, "dead_letter"):   # received messages (not stream messages)
        dead_letter = message.dead_letter
        fields["dead_letter"] = None if dead_letter is None else dead_letter._asdict()
    fields.update(_body_fields(message.body))
    return json.dumps(fields, default=_json_value, ensure_ascii=False)


def _stdin_bytes(what: str) -> bytes:
    """Standard input's bytes, or one line (exit 1) when the process has none (closed)."""
    if sys.stdin is None:   # started with descriptor 0 closed (``<&-``)
        _exit_with(f"error: standard input is closed: nothing to read {what} from", 1)
    try:
        return sys.stdin.buffer.read()
    except OSError as error:
        _exit_with(f"error: cannot read {what} from standard input: {error.strerror}", 1)


def _message_body(message: str | None) -> bytes:
    """MESSAGE as a body, or stdin's bytes when MESSAGE is - or absent (not a terminal).

    MESSAGE's bytes are the command line's own: an argument that is not UTF-8 (Python
    decodes it with ``surrogateescape``) is sent as it was given, not refused.
    """
    if message is None or message == "-":
        if message is None and sys.stdin is not None and sys.stdin.isatty():
            raise click.UsageError("give MESSAGE, or pipe the body on stdin")
        return _stdin_bytes("the body")
    return os.fsencode(message)


def _confirm(question: str) -> None:
    """Ask ``question`` (y/N); abort unless confirmed.

    With standard input closed there is nothing to answer from: one line says to pass
    --yes (exit 1).
    """
    if sys.stdin is None:
        _exit_with("error: this asks for confirmation and standard input is closed; "
                   "pass --yes to confirm", 1)
    click.confirm(question, abort=True)


def _message_options(function: F) -> F:
    """Add the message options ``pub`` and ``request`` share.

    Attributes, FIFO group, deduplication id and priority.
    """
    for option in reversed((
            click.option("--attr", "-a", multiple=True, metavar="NAME=VALUE",
                         help='An attribute (repeatable): 12, -3.5 and 1e3 are numbers, '
                              'anything else and "007" in double quotes a string.'),
            click.option("--group-id", default=None, help="FIFO group id."),
            click.option("--dedup-id", default=None, help="Deduplication id."),
            click.option("--priority", type=click.IntRange(0, 255), default=None,
                         help="0 to 255 (higher first, on a queue with max_priority)."))):
        function = option(function)
    return function


def _output_options(function: F) -> F:
    function = click.option("--json", "as_json", is_flag=True,
                            help="One JSON object a line: metadata, attributes and the body "
                                 "(body_base64 when it is not UTF-8).")(function)
    return click.option("--raw", is_flag=True,
                        help="Write the bodies only, byte for byte, with nothing between "
                             "them" + (" (-n 1 for one body)." if function.__name__ != "request"
                                       else "."))(function)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, its reader gone.

    Python's flush at exit would otherwise fail on the closed pipe once more (a second
    error, exit 120).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _printer(raw: bool, as_json: bool) -> Callable[[dict[str, Any], Any], None]:
    if raw and as_json:
        raise click.UsageError("--raw and --json exclude each other")
    if raw:
        stdout = sys.stdout.buffer

        def write_raw(fields: dict[str, Any], message: Any) -> None:
            stdout.write(message.body)
            stdout.flush()
        return write_raw
    render = _as_json if as_json else _describe
    return lambda fields, message: click.echo(render(fields, message))


@cli.command()
@_client_options
@click.argument("topic")
@click.argument("message", required=False, default=None)
@_message_options
@click.option("--delay", type=_Seconds(min=0), default=None,
              help="Seconds before the message becomes visible.")
@click.option("--deliver-at", type=_Time(), default=None,
              help="Time it becomes visible: ISO 8601 (2026-05-01T12:00:00Z) or Unix seconds.")
@click.option("--ttl", type=_Seconds(min=0, min_open=True), default=None,
              help="Seconds it may wait in a queue before it expires.")
def pub(endpoint: str | None, topic: str, message: str | None, attr: tuple[str, ...],
        **options: Any) -> None:
    """Publish MESSAGE (or stdin, when MESSAGE is - or absent) to TOPIC."""
    body = _message_body(message)
    attributes = _parse_attributes(attr) or None
    with _connected(endpoint) as client:
        result = client.publish(topic, body, attributes=attributes, **options)
    click.echo(f"message {result.message_id}: "
               f"{_counted(result.deliveries, 'delivery', 'deliveries')}"
               + (" (duplicate)" if result.duplicate else ""))


@cli.command()
@_client_options
@click.argument("topic")
@click.argument("message", required=False, default=None)
@_message_options
@click.option("--timeout", type=_Seconds(min=0, min_open=True, max=MAX_REQUEST_TIMEOUT),
              default=DEFAULT_REQUEST_TIMEOUT, show_default=True,
              help="Seconds to wait for the reply.")
@click.option("--ttl", type=_Seconds(min=0, min_open=True), default=None,
              help="Seconds the request may wait in a queue before it expires (in every "
                   "queue it reaches; default: none). --ttl equal to --timeout lets a "
                   "request nobody took expire.")
@_output_options
def request(endpoint: str | None, topic: str, message: str | None, attr: tuple[str, ...],
            timeout: float, raw: bool, as_json: bool, **options: Any) -> None:
    """Publish MESSAGE (or stdin) to TOPIC as a request and print the first reply.

    A responder answers with message.reply(body) (a Worker handler: by returning it).
    Exits 1 when no queue takes the request (no responders) or no reply comes in time.
    """
    if raw and as_json:
        raise click.UsageError("--raw and --json exclude each other")
    body = _message_body(message)
    attributes = _parse_attributes(attr) or None
    with _connected(endpoint) as client:
        reply = client.request(topic, body, attributes=attributes, timeout=timeout,
                               **options)
    if raw:
        sys.stdout.buffer.write(reply.body)
        sys.stdout.buffer.flush()
    elif as_json:
        fields: dict[str, Any] = {"attributes": reply.attributes}
        fields.update(_body_fields(reply.body))
        click.echo(json.dumps(fields, default=_json_value, ensure_ascii=False))
    else:
        head = " ".join(f"{key}={value}" for key, value in reply.attributes.items())
        click.echo(f"{head} {_text_body(reply.body)}" if head else _text_body(reply.body))


@cli.command()
@_client_options
@click.argument("topic_pattern")
@click.option("--count", "-n", type=click.IntRange(min=0), default=0,
              help="Stop after N messages (0: never).")
@_output_options
def sub(endpoint: str | None, topic_pattern: str, count: int, raw: bool,
        as_json: bool) -> None:
    """Listen to the stream of TOPIC_PATTERN and print each message (Ctrl-C stops).

    A stream is at most once: messages published while nobody listens are not kept.
    Messages it missed (it fell behind) are counted on stderr when it ends: after -n N
    messages, a stop signal: Ctrl-C (SIGINT), SIGTERM or SIGHUP, or when its output is
    closed (sub ... | head -n 5): exit 0.
    """
    show = _printer(raw, as_json)
    with sigterm_as_interrupt():
        try:
            with _connected(endpoint) as client, client.listen(topic_pattern) as listener:
                try:
                    seen = 0
                    while not count or seen < count:
                        batch = listener.recv_batch(timeout=IDLE_CHECK)
                        if batch is None:
                            # a stream says nothing when its broker is gone: ask the
                            # broker (a BrokenConnection ends the command, one line)
                            client.list_topics()
                            continue
                        for message in batch:
                            show({"topic": message.topic, "sequence": message.sequence},
                                 message)
                            seen += 1
                            if count and seen >= count:
                                break
                finally:
                    # the only count of a loss under slow_listener "drop": the broker
                    # cannot see it
                    if listener.gaps:
                        click.echo(f"missed {_counted(listener.gaps, 'message')}", err=True)
        except KeyboardInterrupt:   # stopped, as asked: the client and listener closed
            pass
        # its reader gone (| head): the group's invoke ends it quietly, exit 0


@cli.command()
@_client_options
@click.argument("queue")
@click.option("--ack", is_flag=True, help="Ack what is received: the messages are deleted.")
@click.option("--nack", is_flag=True,
              help="Nack it: visible again after the queue's redelivery backoff.")
@click.option("--term", is_flag=True,
              help="Dead-letter it now (reason rejected), or drop it without a DLQ.")
@click.option("--max-messages", "-n", type=click.IntRange(1, 10_000), default=10,
              show_default=True, help="Most messages to receive.")
@click.option("--wait", type=_Seconds(0, 20), default=0.0, show_default=True,
              help="Long-poll seconds when none is visible (0 to 20).")
@_output_options
def receive(endpoint: str | None, queue: str, ack: bool, nack: bool, term: bool,
            max_messages: int, wait: float, raw: bool, as_json: bool) -> None:
    """Receive up to N messages from QUEUE and print them.

    A dead-lettered message shows why and whence: dead_letter=REASON:SOURCE_QUEUE@COUNT
    (its receive count there), or with --json a dead_letter object (reason,
    source_queue, receive_count, first_receive_time, last_receive_time, time).

    Without --ack, --nack or --term, this is a peek: the leases end when the command
    exits (its connection closes), so the messages are visible again at once, their
    receive count one higher (and max_receive_count closer).

    A stop signal (Ctrl-C, SIGTERM, SIGHUP) during the wait ends it at once: nothing is
    printed, the connection closes, exit 0, as when the wait runs out. One that comes
    while received messages are printed or settled ends it with "aborted" (exit 1):
    those not settled are visible again, the connection closed. So does an output
    closed before every message was printed (receive ... | head -n 1): nothing settled.
    """
    if ack + nack + term > 1:
        raise click.UsageError("--ack, --nack and --term exclude each other")
    show = _printer(raw, as_json)
    with sigterm_as_interrupt(), _connected(endpoint) as client:
        try:
            messages = client.receive(queue, max_messages=max_messages, wait=wait)
        except KeyboardInterrupt:   # stopped while waiting: nothing taken (exit 0)
            return
        try:
            _show_and_settle(client, queue, messages, show, as_json,
                             "ack" if ack else "nack" if nack else "term" if term else None)
        except KeyboardInterrupt:
            _exit_with("aborted: stopped while printing or settling what it received; "
                       "what it did not settle is visible again", 1)
        except BrokenPipeError:   # its reader left (| head) before it printed them all
            _quiet_stdout()
            _exit_with("aborted: its output was closed before every message was printed; "
                       "nothing was settled, and what it received is visible again", 1)


def _show_and_settle(client: Any, queue: str, messages: list[Any],
                     show: Callable[[dict[str, Any], Any], None], as_json: bool,
                     settle: str | None) -> None:
    for message in messages:
        show({"id": message.id, "queue": queue, "receive_count": message.receive_count,
              "receipt": message.receipt} if as_json else
             {"id": message.id, "receive_count": message.receive_count}, message)
    receipts = [message.receipt for message in messages]
    if settle is not None and receipts:
        getattr(client, f"{settle}_batch")(receipts)


# -- inspection ----------------------------------------------------------------------------


def _columns(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
             width: int) -> list[str]:
    """A text table: names (column 0) left, never cut; numbers right.

    Number columns that do not fit beside the names in ``width`` go to further tables
    (each repeating the names); a name too long for even one number column beside it
    gets a line of its own.
    """
    if not rows:
        return [f"{title}: none", ""]
    widths = [max([len(header), *(len(row[index]) for row in rows)])
              for index, header in enumerate(headers)]
    lines: list[str] = []
    rest = list(range(1, len(headers)))
    own_line = widths[0] + 2 + (widths[1] if len(widths) > 1 else 0) > width
    while rest:
        start = 2 if own_line else widths[0] + 2
        chunk: list[int] = []
        while rest and (not chunk or start + sum(widths[i] + 2 for i in chunk)
                        + widths[rest[0]] <= width):
            chunk.append(rest.pop(0))
        lines.append(title if not lines else f"{title} (continued)")
        numbers = "  ".join(headers[i].rjust(widths[i]) for i in chunk)
        if own_line:
            lines += [headers[0], f"  {numbers}"]
        else:
            lines.append(f"{headers[0].ljust(widths[0])}  {numbers}")
        for row in rows:
            numbers = "  ".join(row[i].rjust(widths[i]) for i in chunk)
            if own_line:
                lines += [row[0], f"  {numbers}"]
            else:
                lines.append(f"{row[0].ljust(widths[0])}  {numbers}")
        lines.append("")
    return lines


@cli.command()
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--prometheus", is_flag=True,
              help="Print Prometheus's text format (the names of docs/metrics.md).")
def stats(endpoint: str | None, as_json: bool, prometheus: bool) -> None:
    """Print per topic, subscription, queue, storage and connection counters.

    Tables fit the terminal's width (80 columns when not a terminal): counters that do
    not fit go to a further table; names are never cut.
    """
    import dataclasses

    if as_json and prometheus:
        raise click.UsageError("--json and --prometheus exclude each other")
    if prometheus:
        from fastfanout.metrics import exposition

        with _connected(endpoint) as client:
            text = exposition(client)
        sys.stdout.buffer.write(text)
        return
    with _connected(endpoint) as client:
        broker_stats = client.stats()
        server_stats = client.server_stats()
        reports = client.worker_stats()
    if as_json:
        click.echo(json.dumps({"broker": dataclasses.asdict(broker_stats),
                               "server": server_stats, "workers": reports},
                              indent=2, sort_keys=True))
        return
    width = shutil.get_terminal_size((80, 24)).columns
    topic_columns = ("published", "deliveries", "unrouted", "subscriptions")
    lines = _columns(
        "topics", ("topic", *topic_columns),
        [(name, *(str(getattr(topic, c)) for c in topic_columns))
         for name, topic in broker_stats.topics.items()], width)
    lines += _columns(
        "subscriptions", ("subscription", "topic", "queue", "delivered", "filtered_out",
                          *SUBSCRIPTION_DROP_REASONS),
        [(str(sid), sub.topic, sub.queue, str(sub.delivered), str(sub.filtered_out),
          *(str(sub.dropped.get(reason, 0)) for reason in SUBSCRIPTION_DROP_REASONS))
         for sid, sub in broker_stats.subscriptions.items()], width)
    lines += _columns(
        "queues", ("queue", *QUEUE_COLUMNS, "dropped"),
        [(name, *(str(getattr(queue, c)) for c in QUEUE_COLUMNS),
          str(sum(queue.dropped.values()))) for name, queue in broker_stats.queues.items()],
        width)
    topology = broker_stats.topology
    lines += _columns(
        "topology", ("kind", "count", "limit", "refused"),
        [("topics", str(topology.topics), str(topology.max_topics),
          str(topology.topics_refused)),
         ("queues", str(topology.queues), str(topology.max_queues),
          str(topology.queues_refused)),
         ("subscriptions", str(topology.subscriptions),
          f"{topology.max_subscriptions_per_topic} per topic",
          str(topology.subscriptions_refused)),
         ("pattern subscriptions", str(topology.pattern_subscriptions),
          str(topology.max_pattern_subscriptions),
          str(topology.pattern_subscriptions_refused))], width)
    storage = broker_stats.storage
    if storage is None:
        lines += ["storage: none (in memory)", ""]
    else:   # the long texts beside the table, so its values stay a narrow column
        lines += _columns(f"storage in {storage.get('data_dir')}", ("counter", "value"),
                          _storage_rows(storage), width)
        if storage.get("failure"):
            lines[-1:-1] = [f"failure: {storage['failure']}"]
    connections = server_stats.pop("connection_stats", None) or {}
    lines += _columns(
        "connections", ("connection", *CONNECTION_COLUMNS),
        [(name, *(str(counters.get(c, 0)) for c in CONNECTION_COLUMNS))
         for name, counters in sorted(connections.items())], width)
    bridge = server_stats.pop("bridge", None) or {}
    bridge_columns = ("messages", "rate", "lag", "in_flight", "retries", "errors",
                      "duplicates", "dead_lettered", "connected")
    lines += _columns(
        "bridge", ("rule", *bridge_columns),
        [(name, *(f"{rule.get(c, 0):g}" for c in bridge_columns))
         for name, rule in sorted(bridge.items())], width) if bridge else []
    lines += _columns("handlers", ("worker/handler", "queue", *HANDLER_COLUMNS),
                      _handler_rows(reports), width)
    lines += _columns("server", ("counter", "value"),
                      [(key, str(value)) for key, value in sorted(server_stats.items())], width)
    click.echo("\n".join(lines).rstrip("\n"))


QUEUE_COLUMNS = ("visible", "leased", "delayed", "enqueued", "delivered", "acked",
                 "redelivered", "dead_lettered", "rejected", "oversized")
"""The counter columns of ``fastfanout stats``' queues table, before ``dropped`` (every
reason summed): ``rejected`` and ``oversized`` count the messages a full queue
(``max_messages``, ``max_bytes``) or its ``max_message_size`` refused."""


def _storage_rows(storage: dict[str, Any]) -> list[tuple[str, str]]:
    """The storage table's rows: each counter of a durable broker's journal.

    ``recovery``'s entries become ``recovery.<key>`` rows, a list (the records skipped,
    the bad segments) its length, a map (the torn tail) its items (until 2026-12-07 its
    number of keys: a torn tail of 46 bytes read 5); a value that is None reads ``-``. The
    ``data_dir`` and the ``failure`` text go beside the table (its title, a line after).
    """
    def text(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, dict):   # one finding (the torn tail): what it says, not
            return ", ".join(f"{k}={v}" for k, v in value.items())   # its key count
        return str(len(value)) if isinstance(value, list | tuple) else str(value)

    rows = [(key, text(value)) for key, value in sorted(storage.items())
            if key not in ("recovery", "data_dir", "failure")]
    rows += [(f"recovery.{key}", text(value))
             for key, value in sorted((storage.get("recovery") or {}).items())]
    return rows


CONNECTION_COLUMNS = ("consumers", "requests", "published", "delivered", "acked",
                      "bytes_in", "bytes_out")
"""The columns of ``fastfanout stats``' connections table (SERVER_STATS'
``connection_stats``)."""

HANDLER_COLUMNS = ("processes", "processed", "failed", "retried", "dead_lettered",
                   "in_flight", "p50_ms", "p99_ms")
"""The columns of ``fastfanout stats``' handlers table (from the workers' reports)."""


def _handler_rows(reports: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The handlers table's rows: one per worker name and handler.

    Counters are summed over the reports of that name (one per worker process that
    reports), times are the largest (an upper bound: the samples stay in the workers).
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        for handler, entry in report["handlers"].items():
            row = merged.setdefault((report["worker"], handler), {
                "queue": entry["queue"], **dict.fromkeys(HANDLER_COLUMNS[:6], 0),
                "p50": None, "p99": None})
            for column in HANDLER_COLUMNS[:6]:
                row[column] += entry[column]
            for key in ("p50", "p99"):
                if entry[key] is not None:
                    row[key] = max(entry[key], row[key] or 0.0)

    def milliseconds(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.3g}"

    return [(f"{worker}/{handler}", row["queue"],
             *(str(row[column]) for column in HANDLER_COLUMNS[:6]),
             milliseconds(row["p50"]), milliseconds(row["p99"]))
            for (worker, handler), row in sorted(merged.items())]


def _listing(as_json: bool, names: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(names))
    for name in [] if as_json else names:
        click.echo(name)


TOP_TOPIC_RATES: Final = ("published", "deliveries", "unrouted")
"""The topic counters ``fastfanout top`` shows as rates (per second)."""
TOP_QUEUE_LEVELS: Final = ("messages", "visible", "leased", "delayed")
"""The queue levels ``fastfanout top`` shows as they are."""
TOP_QUEUE_RATES: Final = ("enqueued", "delivered", "acked", "redelivered", "dead_lettered",
                          "rejected")
"""The queue counters ``fastfanout top`` shows as rates (per second), then ``dropped``."""


def _per_second(new: int, old: int | None, seconds: float) -> str:
    """A counter's rate between two reads (``-`` for a name the last read did not have)."""
    return "-" if old is None else f"{max(new - old, 0) / seconds:.0f}"


def _busiest(rows: list[tuple[str, ...]], most: int | None
             ) -> tuple[list[tuple[str, ...]], int]:
    """``rows`` busiest first (by their first number, then name), at most ``most``.

    Returns the rows kept and the number left out.
    """
    rows = sorted(rows, key=lambda row: (-int(row[1]) if row[1].isdigit() else 0, row[0]))
    if most is None or len(rows) <= most:
        return rows, 0
    return rows[:most], len(rows) - most


def _top_lines(endpoint: str, interval: float, seconds: float, last: Any, now: Any,
               server: dict[str, Any], width: int, height: int | None) -> list[str]:
    """One screen of ``fastfanout top``: rates over the last ``seconds``, levels now.

    Topics busiest first (by messages published a second), queues by messages held; on a
    terminal of ``height`` lines the rows that do not fit are left out, and counted.
    """
    head = (f"fastfanout top: {endpoint}, every {interval:g} s, "
            f"{datetime.now().strftime('%H:%M:%S')}")
    lines = [head, " ".join(f"{key} {server.get(key, 0)}" for key in
                            ("connections", "consumers", "long_polls", "held")), ""]
    # the header lines, and each table's title, header and blank line twice over (a
    # table too wide for the terminal goes on in a second one)
    room = None if height is None else max(2, (height - len(lines) - 14) // 4)
    topics, topics_left = _busiest(
        [(name, *(_per_second(getattr(topic, c), getattr(last.topics.get(name), c, None),
                              seconds) for c in TOP_TOPIC_RATES))
         for name, topic in now.topics.items()], room)
    lines += _columns("topics (per second)", ("topic", *TOP_TOPIC_RATES), topics, width)
    if topics_left:
        lines[-1:-1] = [f"... and {topics_left} more topics (fastfanout stats shows all)"]

    def dropped(queue: Any) -> int:
        return sum(queue.dropped.values())

    queues, queues_left = _busiest(
        [(name, *(str(getattr(queue, c)) for c in TOP_QUEUE_LEVELS),
          *(_per_second(getattr(queue, c), getattr(last.queues.get(name), c, None), seconds)
            for c in TOP_QUEUE_RATES),
          _per_second(dropped(queue), None if name not in last.queues
                      else dropped(last.queues[name]), seconds))
         for name, queue in now.queues.items()], None if room is None else 2 * room)
    lines += _columns(
        "queues (levels now; counters per second)",
        ("queue", *TOP_QUEUE_LEVELS, *(f"{c}/s" for c in TOP_QUEUE_RATES), "dropped/s"),
        queues, width)
    if queues_left:
        lines[-1:-1] = [f"... and {queues_left} more queues (fastfanout stats shows all)"]
    return lines


@cli.command()
@_client_options
@click.option("--interval", "-i", type=_Seconds(min=0.05, max=3600), default=1.0,
              show_default=True, help="Seconds between two screens.")
@click.option("--count", "-n", type=click.IntRange(min=0), default=0,
              help="Stop after N screens (0: when stopped).")
def top(endpoint: str | None, interval: float, count: int) -> None:
    """Show each topic's and queue's rates and levels, again every --interval seconds.

    Rates are per second over the last interval (the first screen comes after one);
    levels (messages, visible, leased, delayed) are as they are now. Topics come busiest
    first (published a second), queues by messages held. On a terminal each screen
    replaces the last and shows the busiest that fit; otherwise screens follow one
    another, whole. Ctrl-C, SIGTERM or SIGHUP stop it (exit 0).
    """
    shown = 0
    with sigterm_as_interrupt():
        try:
            with _connected(endpoint) as client:
                last, then = client.stats(), time.monotonic()
                while not count or shown < count:
                    time.sleep(interval)
                    now, at = client.stats(), time.monotonic()
                    server = client.server_stats()
                    width, height = shutil.get_terminal_size((80, 24))
                    terminal = sys.stdout.isatty()
                    lines = _top_lines(_resolve(endpoint), interval, at - then, last, now,
                                       server, width, height if terminal else None)
                    if terminal:
                        click.clear()
                    click.echo("\n".join(lines).rstrip("\n") + "\n")
                    last, then = now, at
                    shown += 1
        except KeyboardInterrupt:   # stopped, as asked: the client closed
            pass
        # its reader gone (| head): the group's invoke ends it quietly, exit 0


@cli.group()
def definitions() -> None:
    """Export a broker's topology as JSON, or import such a document into a broker.

    Topics, queues (with every setting) and subscriptions (with their filter policies):
    RabbitMQ's definitions. Messages are not part of them. The document's form is in
    docs/semantics.md ("Definitions").
    """


@definitions.command("export")
@_client_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Write the document to this file (default: stdout).")
def definitions_export(endpoint: str | None, output: str | None) -> None:
    """Print the broker's topics, queues and subscriptions as one JSON document."""
    from fastfanout.definitions import export_definitions

    with _connected(endpoint) as client:
        document = json.dumps(export_definitions(client), indent=2) + "\n"
    if output is None:
        click.echo(document, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(document)
    except OSError as error:
        _exit_with(f"error: cannot write {output}: {error.strerror}", 1)


@definitions.command("import")
@_client_options
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--update", is_flag=True,
              help="Change what the broker holds with other settings, where it may change "
                   "(queue settings set_queue_settings takes, filter policies).")
@click.option("--durable/--not-durable", default=None,
              help="Make every queue durable, or not, whatever the document says.")
@click.option("--dry-run", is_flag=True, help="Print what it would do; change nothing.")
def definitions_import(endpoint: str | None, file: str, update: bool,
                       durable: bool | None, dry_run: bool) -> None:
    """Make the broker hold the topology of FILE (a definitions document; - for stdin).

    What is missing is created; what is held with the same settings is left alone; what
    is held with other settings is a conflict (exit 1, nothing changed) unless --update
    changes it. Nothing is deleted.
    """
    from fastfanout.definitions import import_definitions

    if file == "-":
        text = _stdin_bytes("the definitions")
    else:
        try:
            with open(file, "rb") as handle:
                text = handle.read()
        except OSError as error:
            _exit_with(f"error: cannot read {file}: {error.strerror}", 1)
    with _connected(endpoint) as client:
        result = import_definitions(client, text, update=update, durable=durable,
                                    dry_run=dry_run)
    create, update_ = ("would create", "would update") if dry_run else ("created", "updated")
    for line in result.created:
        click.echo(f"{create} {line}")
    for line in result.updated:
        click.echo(f"{update_} {line}")
    if dry_run:
        click.echo(f"{len(result.created)} to create, {len(result.updated)} to update, "
                   f"{result.unchanged} unchanged (a dry run: nothing changed)")
    else:
        click.echo(f"{len(result.created)} created, {len(result.updated)} updated, "
                   f"{result.unchanged} unchanged")


@cli.command("list-topics")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_topics(endpoint: str | None, as_json: bool) -> None:
    """Print the name of every topic, one a line."""
    with _connected(endpoint) as client:
        names = client.list_topics()
    _listing(as_json, names)


@cli.command("list-queues")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_queues(endpoint: str | None, as_json: bool) -> None:
    """Print the name of every queue, one a line."""
    with _connected(endpoint) as client:
        names = client.list_queues()
    _listing(as_json, names)


@cli.command("list-subscriptions")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def list_subscriptions(endpoint: str | None, as_json: bool) -> None:
    """Print every subscription: its id (for unsubscribe), topic and queue."""
    with _connected(endpoint) as client:
        subscriptions = client.list_subscriptions()
    if as_json:
        click.echo(json.dumps([{"id": sid, "topic": topic, "queue": queue}
                               for sid, (topic, queue) in sorted(subscriptions.items())]))
        return
    rows = [(str(sid), topic, queue) for sid, (topic, queue) in sorted(subscriptions.items())]
    widths = [max([len(header), *(len(row[i]) for row in rows)])
              for i, header in enumerate(("id", "topic", "queue"))]
    for row in [("id", "topic", "queue"), *rows] if rows else []:
        click.echo(f"{row[0].rjust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")


# -- administration ------------------------------------------------------------------------


@cli.command("create-topic")
@_client_options
@click.argument("name")
@click.option("--fifo", is_flag=True, help="FIFO topic (messages need a group id).")
@click.option("--content-dedup", is_flag=True, help="Deduplicate by body hash.")
@click.option("--dedup-window", type=float, default=300.0,
              show_default=True, help="Seconds.")
def create_topic(endpoint: str | None, name: str, fifo: bool, content_dedup: bool,
                 dedup_window: float) -> None:
    """Create topic NAME (a no-op if it exists)."""
    with _connected(endpoint) as client:
        client.create_topic(name, fifo=fifo, content_dedup=content_dedup,
                            dedup_window=dedup_window)
    click.echo(f"topic {name}")


def _backoff_seconds(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} must be comma-separated seconds, like 1,5,30"
                                 ) from None


def _backoff(ctx: click.Context, param: click.Parameter, value: str | None
             ) -> tuple[float, ...] | None:
    return None if value is None else _backoff_seconds(value)


@cli.command("create-queue")
@_client_options
@click.argument("name")
@click.option("--visibility-timeout", type=float,
              default=30.0, show_default=True, help="Lease seconds.")
@click.option("--max-receive-count", type=int, default=None,
              help="Deliveries before DLQ.")
@click.option("--dead-letter-queue", default=None, help="Name of the dead-letter queue.")
@click.option("--delay", type=float, default=0.0, show_default=True,
              help="Seconds.")
@click.option("--max-messages", type=int, default=None,
              help="Bound on messages held.")
@click.option("--max-bytes", type=int, default=None,
              help="Bound on bytes held.")
@click.option("--max-message-size", type=int, default=1_048_576,
              show_default=True, help="Bytes.")
@click.option("--retention", type=float, default=345_600.0,
              show_default=True, help="Seconds.")
@click.option("--overflow", type=click.Choice(["reject", "drop_oldest", "dead_letter", "hold"]),
              default="reject", show_default=True)
@click.option("--max-priority", type=int, default=0, show_default=True)
@click.option("--fifo", is_flag=True, help="Strict order per group id.")
@click.option("--content-dedup", is_flag=True, help="Deduplicate by body hash.")
@click.option("--dedup-window", type=float, default=300.0,
              show_default=True, help="Seconds.")
@click.option("--redelivery-backoff", default=None, callback=_backoff,
              help="Comma-separated seconds waited before redelivery 1, 2, ...")
@click.option("--durable/--not-durable", default=None,
              help="Journal its messages so they survive a restart, or keep them in "
                   "memory only (the queue itself comes back, empty). Default: durable "
                   "on a broker with a data directory; --durable on an --in-memory "
                   "broker is an error.")
def create_queue(endpoint: str | None, name: str, redelivery_backoff: tuple[float, ...] | None,
                 **settings: Any) -> None:
    """Create queue NAME with the given settings (a no-op if equal ones exist)."""
    if redelivery_backoff is not None:
        settings["redelivery_backoff"] = redelivery_backoff
    with _connected(endpoint) as client:
        client.create_queue(name, **settings)
    click.echo(f"queue {name}")


class _Removed:
    """A ``set-queue-settings`` option given as ``none``: the setting becomes None."""


_REMOVED: Final = _Removed()


def _or_none(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter,
                                                         str | None], Any]:
    """A ``set-queue-settings`` option's callback, ``parse`` reading its value.

    ``none`` removes the setting (it becomes None); an option not given is None (no change).
    """
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        if value.strip().lower() == "none":
            return _REMOVED
        return parse(value)
    return callback


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} must be a whole number, or none") from None


@cli.command("set-queue-settings")
@_client_options
@click.argument("name")
@click.option("--visibility-timeout", type=float, default=None, help="Lease seconds.")
@click.option("--max-receive-count", default=None, callback=_or_none(_count),
              metavar="N|none", help="Deliveries before DLQ (none: unlimited).")
@click.option("--dead-letter-queue", default=None, callback=_or_none(str),
              metavar="NAME|none", help="Name of the dead-letter queue (none: no DLQ).")
@click.option("--delay", type=float, default=None, help="Seconds.")
@click.option("--max-messages", default=None, callback=_or_none(_count),
              metavar="N|none", help="Bound on messages held (none: no bound).")
@click.option("--max-bytes", default=None, callback=_or_none(_count),
              metavar="N|none", help="Bound on bytes held (none: no bound).")
@click.option("--max-message-size", type=int, default=None, help="Bytes.")
@click.option("--retention", type=float, default=None,
              help="Seconds (applies to the messages held too).")
@click.option("--overflow", type=click.Choice(["reject", "drop_oldest", "dead_letter", "hold"]),
              default=None)
@click.option("--redelivery-backoff", default=None, callback=_or_none(_backoff_seconds),
              metavar="SECONDS|none",
              help="Comma-separated seconds waited before redelivery 1, 2, ... (none: none)")
def set_queue_settings(endpoint: str | None, name: str, **options: Any) -> None:
    """Change settings of queue NAME; prints all its settings after the change.

    Only the options given change (none of them: the settings are printed as they
    are). Ordering (--fifo), priorities, deduplication and durability are a queue's for
    life: create another queue to change those.
    """
    changes = {key: None if value is _REMOVED else value
               for key, value in options.items() if value is not None}
    with _connected(endpoint) as client:
        settings = (client.set_queue_settings(name, **changes) if changes
                    else client.queue_settings(name))
    shown = ", ".join(f"{field.name}={getattr(settings, field.name)!r}"
                      for field in dataclasses.fields(settings))
    click.echo(f"queue {name}: {shown}")


@cli.command()
@_client_options
@click.argument("topic")
@click.argument("queue")
@click.option("--filter-policy", default=None, help="SNS filter policy JSON.")
@click.option("--filter-scope", type=click.Choice(["attributes", "body"]),
              default="attributes", show_default=True)
def subscribe(endpoint: str | None, topic: str, queue: str, filter_policy: str | None,
              filter_scope: str) -> None:
    """Subscribe QUEUE to TOPIC (a name or pattern); prints the subscription id.

    fastfanout list-subscriptions prints the ids again.
    """
    with _connected(endpoint) as client:
        subscription_id = client.subscribe(topic, queue, filter_policy=filter_policy,
                                           filter_scope=filter_scope)
    click.echo(f"subscription {subscription_id}")


@cli.command("set-filter-policy")
@_client_options
@click.argument("subscription_id", type=_SubscriptionId())
@click.argument("policy")
@click.option("--filter-scope", type=click.Choice(["attributes", "body"]), default=None,
              help="the scope of POLICY  [default: the subscription's scope, kept]")
def set_filter_policy(endpoint: str | None, subscription_id: int, policy: str,
                      filter_scope: str | None) -> None:
    """Replace the filter policy of subscription SUBSCRIPTION_ID (POLICY: JSON, or '' for none).

    fastfanout list-subscriptions prints the ids.
    """
    with _connected(endpoint) as client:
        client.set_filter_policy(subscription_id, policy or None, filter_scope=filter_scope)
        scope = client.subscription(subscription_id).filter_scope
    click.echo(f"subscription {subscription_id}: " + (
        f"filter policy set ({scope})" if policy else "no filter policy"))


@cli.command(context_settings={"ignore_unknown_options": True})   # -1: an id, refused
@_client_options
@click.argument("subscription_id", type=_SubscriptionId())
def unsubscribe(endpoint: str | None, subscription_id: int) -> None:
    """Remove subscription SUBSCRIPTION_ID (see fastfanout list-subscriptions)."""
    with _connected(endpoint) as client:
        client.unsubscribe(subscription_id)
    click.echo(f"unsubscribed {subscription_id}")


@cli.command()
@_client_options
@click.argument("queue")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(endpoint: str | None, queue: str, yes: bool) -> None:
    """Remove every message of QUEUE (visible, leased and delayed); prints how many."""
    if not yes:
        _confirm(f"Remove every message of queue {queue}?")
    with _connected(endpoint) as client:
        removed = client.purge(queue)
    click.echo(f"purged {_counted(removed, 'message')} from {queue}")


@cli.command()
@_client_options
@click.argument("dead_letter_queue", metavar="DLQ")
@click.option("--to", "to", default=None,
              help="Queue to move every message to (default: each message's source queue).")
@click.option("--max-messages", "-n", type=click.IntRange(min=1), default=None,
              help="Move at most N messages (default: all).")
def redrive(endpoint: str | None, dead_letter_queue: str, to: str | None,
            max_messages: int | None) -> None:
    """Move dead-lettered messages of DLQ back to their source queues (or to --to)."""
    with _connected(endpoint) as client:
        moved = client.redrive(dead_letter_queue, to=to, max_messages=max_messages)
    click.echo(f"redrove {_counted(moved, 'message')} from {dead_letter_queue}"
               + (f" to {to}" if to else ""))


@cli.command("delete-queue")
@_client_options
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def delete_queue(endpoint: str | None, name: str, yes: bool) -> None:
    """Delete queue NAME with its messages and subscriptions."""
    if not yes:
        _confirm(f"Delete queue {name} and its messages?")
    with _connected(endpoint) as client:
        client.delete_queue(name)
    click.echo(f"deleted queue {name}")


@cli.command("delete-topic")
@_client_options
@click.argument("name")
def delete_topic(endpoint: str | None, name: str) -> None:
    """Delete topic NAME and its subscriptions (messages already queued stay)."""
    with _connected(endpoint) as client:
        client.delete_topic(name)
    click.echo(f"deleted topic {name}")


# -- worker --------------------------------------------------------------------------------


def _load_worker(target: str) -> Any:
    """The ``Worker`` named by ``module:attribute`` (the current directory importable)."""
    import importlib

    from fastfanout.workers import Worker

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{target!r} is not MODULE:ATTRIBUTE (say, myapp.tasks:app)",
                                 param_hint="'APP'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise click.BadParameter(f"cannot import {module_name!r}: {error}",
                                 param_hint="'APP'") from None
    except Exception as error:   # the module's own code failed: one line, no traceback
        raise click.BadParameter(f"importing {module_name!r} raised "
                                 f"{type(error).__name__}: {error}", param_hint="'APP'"
                                 ) from None
    except SystemExit as exiting:   # sys.exit() on import: say so, never end silently
        raise click.BadParameter(f"importing {module_name!r} called sys.exit({exiting.code!r})",
                                 param_hint="'APP'") from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise click.BadParameter(f"module {module_name!r} has no attribute {attribute!r}",
                                     param_hint="'APP'")
        value = getattr(value, part)
    if not isinstance(value, Worker):
        raise click.BadParameter(f"{target} is a {type(value).__name__}, not a "
                                 f"fastfanout.Worker", param_hint="'APP'")
    return value


@cli.command()
@_client_options
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where the /metrics endpoint listens [default: 127.0.0.1:9771, loopback "
                   "only; 0.0.0.0:PORT lets other hosts scrape it, port 0 picks one].")
def metrics(endpoint: str | None, listen: str | None) -> None:
    """Serve the broker's metrics to Prometheus at http://HOST:PORT/metrics.

    An exporter beside the broker (as NATS's): each scrape asks the broker for its
    counters (those of fastfanout stats; the names are in docs/metrics.md). A broker that
    does not answer a scrape (not started yet, stopped, restarting) shows as
    fastfanout_up 0 until it is back, so the exporter may start before the broker. Runs
    until SIGTERM, SIGINT or SIGHUP (exit 0).
    """
    from fastfanout.metrics import DEFAULT_METRICS_ADDRESS, ServedBroker
    from fastfanout.runtime import ipc_occupant

    address = listen or DEFAULT_METRICS_ADDRESS
    host, port = _metrics_address(address, "--listen")
    endpoint = _resolve(endpoint)
    occupant = ipc_occupant(endpoint)
    if occupant is not None:   # a file of the user's: no broker will ever answer there
        _exit_with(f"error: no broker at {endpoint} ({endpoint[len('ipc://'):]} is "
                   f"{occupant}, not a broker's socket); point --endpoint (or "
                   f"$FASTFANOUT_ENDPOINT) at a broker's socket", 1)
    served = ServedBroker(endpoint)   # connects at a scrape, once a broker answers
    served.attach(_client_curve())
    with sigterm_as_interrupt():
        try:
            with _listen_for_metrics(served, host, port, address, "--listen") as server:
                try:
                    try:   # the broker's connection made now, before the line says so
                        served.server_stats()
                    except FastFanoutError:
                        click.echo(f"no broker answers at {endpoint} yet: scrapes read "
                                   f"fastfanout_up 0 until one does", err=True)
                    click.echo(f"serving the metrics of {endpoint} at {server.url}")
                    threading.Event().wait()
                finally:
                    served.close()
        except KeyboardInterrupt:   # stopped, as asked: the endpoint and client closed
            pass


@cli.command()
@click.argument("app", metavar="MODULE:APP")
@_client_options
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), default=None,
              help="Calls at once per handler and process, for handlers without their own "
                   "(default: the Worker's, 4).")
@click.option("--processes", "-p", type=click.IntRange(1, 256), default=None,
              help="Worker processes per handler, for handlers without their own "
                   "(default: the Worker's, 1).")
@click.option("--shutdown-timeout", type=_Seconds(0, 86_400), default=None,
              help="Seconds running handlers get to finish on SIGTERM, SIGINT or SIGHUP "
                   "(default: the Worker's, 30); then their messages are nacked for "
                   "redelivery.")
@click.option("--log-level", default="INFO", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Logging threshold (default INFO).")
def worker(app: str, endpoint: str | None, concurrency: int | None, processes: int | None,
           shutdown_timeout: float | None, log_level: str) -> None:
    """Run the handlers of the fastfanout.Worker at MODULE:APP until a stop signal.

    On SIGTERM, SIGINT or SIGHUP it takes no more messages, lets running handlers finish within the
    shutdown timeout, nacks the rest so they are redelivered at once, and exits 0.
    """
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    context = click.get_current_context()
    if context.get_parameter_source("endpoint") is ParameterSource.ENVIRONMENT:
        # $FASTFANOUT_ENDPOINT is a default: the app's own Worker(endpoint) wins over it
        # (a Worker() without one reads it itself); --endpoint wins over both
        endpoint = None
    try:
        app_worker = _load_worker(app)
        curve = _client_curve()
        app_worker.configure(endpoint=endpoint, concurrency=concurrency, processes=processes,
                             shutdown_timeout=shutdown_timeout, name=app, curve=curve)
        app_worker.run()   # its own handlers: a graceful stop on a stop signal
    except FastFanoutError as error:
        _fail(error)
    except KeyboardInterrupt:   # a stop signal before it ran: nothing was started
        pass


@cli.command()
@click.option("--messages", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Messages to publish.")
@click.option("--endpoint", "-e", type=ENDPOINT, default=None,
              help="Endpoint of the demo's own broker (default: a fresh one per user).")
@click.option("--embedded", is_flag=True,
              help="One process: an in-process Broker and consumer threads.")
def demo(messages: int, endpoint: str | None, embedded: bool) -> None:
    """Run the cross-process fan-out demo (python -m fastfanout.demo)."""
    from fastfanout.demo import main as demo_main

    argv = ["--messages", str(messages), *(["--endpoint", endpoint] if endpoint else []),
            *(["--embedded"] if embedded else [])]
    sys.exit(demo_main(argv))


def _add_bench() -> None:
    """Register ``fastfanout bench`` (fastfanout.bench.cli)."""
    from fastfanout.bench.cli import bench

    cli.add_command(bench)


_add_bench()


def main() -> None:
    """The command line; the console script enters it by ``fastfanout.entry.main``.

    ``fastfanout.entry.main`` (the console script's, and ``python -m fastfanout``'s)
    holds the stop signals before it imports this module, then calls this.

    Once the command is done the stop signals are held again, to the end: one that came
    as the interpreter shut down met Python's default again and killed a command that
    had done its work (exit 143 after ``pub`` printed its result).
    """
    try:
        cli(prog_name="fastfanout")
    finally:
        hold_stop_signals()
