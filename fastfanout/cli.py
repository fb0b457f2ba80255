"""The ``fastfanout`` command line: serve a broker, and talk to one.

Every command but ``serve`` and ``demo`` is a thin client call (``fastfanout.client``);
``--endpoint`` (or ``$FASTFANOUT_ENDPOINT``) picks the broker, the per-user ipc socket by
default. Errors from the broker print as ``error [code]: message`` with exit status 1.
"""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from fastfanout.errors import FastFanoutError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

endpoint_option = click.option(
    "--endpoint", "-e", envvar="FASTFANOUT_ENDPOINT", default=None,
    help="Broker endpoint (ipc://PATH or tcp://HOST:PORT); default: per-user ipc socket.")


def _fail(error: FastFanoutError) -> NoReturn:
    click.echo(f"error [{error.code}]: {error}", err=True)
    sys.exit(1)


@contextmanager
def _connected(endpoint: str | None) -> Iterator[Any]:
    """A client of the broker at ``endpoint``; a broker error ends the command (exit 1)."""
    from fastfanout.client import connect

    try:
        with connect(endpoint, timeout=5.0) as client:
            yield client
    except FastFanoutError as error:
        _fail(error)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """fastfanout: an in-host SNS+SQS-style message broker."""


@cli.command()
@endpoint_option
@click.option("--config", type=click.Path(exists=True, dir_okay=False),
              help="TOML file with Server options (endpoint, heartbeat_timeout, ..., "
                   "curve_secret_key, curve_clients); command-line options win.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--curve-secret-key", type=click.Path(exists=True, dir_okay=False),
              help="The broker's zmq.auth secret certificate (.key_secret): turns on "
                   "CURVE; required to bind tcp beyond loopback.")
@click.option("--curve-clients", metavar="DIR|*", default=None,
              help="With CURVE: directory of allowed clients' public certificates (*.key), "
                   "or '*' to allow any client that knows the broker's public key.")
@click.option("--slow-listener", type=click.Choice(["drop", "wait"]), default=None,
              help="Policy for stream listeners that fall behind (default drop).")
@click.option("--hold-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds a publish to a full overflow=hold queue is held before it is "
                   "answered with queue_full (default 30; 0: at once).")
@click.option("--local-channels/--no-local-channels", default=None,
              help="Let clients on this host talk through shared memory (ipc:// only; "
                   "default on).")
def serve(endpoint: str | None, config: str | None, log_level: str,
          curve_secret_key: str | None, curve_clients: str | None,
          slow_listener: str | None, hold_timeout: float | None,
          local_channels: bool | None) -> None:
    """Run a broker until SIGTERM or SIGINT (then exit 0)."""
    from fastfanout.server import serve as run_server
    from fastfanout.transport import load_curve_keys

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {}
    if config:
        with open(config, "rb") as handle:
            options.update(tomllib.load(handle))
    if endpoint:
        options["endpoint"] = endpoint
    if slow_listener:
        options["slow_listener"] = slow_listener
    if hold_timeout is not None:
        options["hold_timeout"] = hold_timeout
    if local_channels is not None:
        options["local_channels"] = local_channels
    configured_key = options.pop("curve_secret_key", None)
    curve_secret_key = curve_secret_key or configured_key
    if curve_clients:
        options["curve_clients"] = curve_clients
    try:
        if curve_secret_key:
            options["curve"] = load_curve_keys(str(curve_secret_key))
    except (OSError, ValueError) as error:   # TransportError is an OSError
        raise click.BadParameter(str(error), param_hint="--curve-secret-key") from None
    try:
        sys.exit(run_server(**options))
    except FastFanoutError as error:
        _fail(error)


def _parse_attributes(pairs: tuple[str, ...]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} must be NAME=VALUE", param_hint="--attr")
        number: Any = value
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = value
        attributes[name] = number
    return attributes


@cli.command()
@endpoint_option
@click.argument("topic")
@click.argument("message", required=False, default="-")
@click.option("--attr", "-a", multiple=True, help="Attribute NAME=VALUE (numbers stay numbers).")
@click.option("--group-id", default=None, help="FIFO group id.")
@click.option("--dedup-id", default=None, help="Deduplication id.")
@click.option("--delay", type=float, default=None, help="Seconds before delivery.")
def pub(endpoint: str | None, topic: str, message: str, attr: tuple[str, ...],
        group_id: str | None, dedup_id: str | None, delay: float | None) -> None:
    """Publish MESSAGE (or stdin when MESSAGE is - or absent) to TOPIC."""
    body = sys.stdin.buffer.read() if message == "-" else message.encode()
    with _connected(endpoint) as client:
        result = client.publish(topic, body, attributes=_parse_attributes(attr) or None,
                                group_id=group_id, dedup_id=dedup_id, delay=delay)
    click.echo(f"message {result.message_id}: {result.deliveries} deliveries"
               + (" (duplicate)" if result.duplicate else ""))


@cli.command()
@endpoint_option
@click.argument("topic_pattern")
@click.option("--count", "-n", type=int, default=0, help="Stop after N messages (0: never).")
def sub(endpoint: str | None, topic_pattern: str, count: int) -> None:
    """Listen to the stream of TOPIC_PATTERN and print each message (Ctrl-C stops)."""
    try:
        with _connected(endpoint) as client, client.listen(topic_pattern) as listener:
            seen = 0
            for message in listener:
                click.echo(f"{message.topic} #{message.sequence} id={message.id} "
                           f"{message.attributes or ''} {message.body!r}")
                seen += 1
                if count and seen >= count:
                    break
            if listener.gaps:
                click.echo(f"missed {listener.gaps} messages", err=True)
    except KeyboardInterrupt:
        pass


@cli.command()
@endpoint_option
@click.argument("queue")
@click.option("--ack", is_flag=True, help="Ack what is received (default: leave it leased).")
@click.option("--max-messages", "-n", type=int, default=10, show_default=True)
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Long-poll seconds (0 to 20).")
def receive(endpoint: str | None, queue: str, ack: bool, max_messages: int,
            wait: float) -> None:
    """Receive up to N messages from QUEUE and print them."""
    with _connected(endpoint) as client:
        messages = client.receive(queue, max_messages=max_messages, wait=wait)
        for message in messages:
            click.echo(f"id={message.id} receive_count={message.receive_count} "
                       f"receipt={message.receipt} {message.attributes or ''} "
                       f"{message.body!r}")
        if ack and messages:
            client.ack_batch([message.receipt for message in messages])


@cli.command()
@endpoint_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def stats(endpoint: str | None, as_json: bool) -> None:
    """Print per topic, queue and connection counters."""
    import dataclasses

    with _connected(endpoint) as client:
        broker_stats = client.stats()
        server_stats = client.server_stats()
    if as_json:
        click.echo(json.dumps({"broker": dataclasses.asdict(broker_stats),
                               "server": server_stats}, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    topics = Table(title="topics")
    for column in ("topic", "published", "deliveries", "unrouted", "subscriptions"):
        topics.add_column(column, justify="left" if column == "topic" else "right")
    for name, topic in broker_stats.topics.items():
        topics.add_row(name, str(topic.published), str(topic.deliveries), str(topic.unrouted),
                       str(topic.subscriptions))
    console.print(topics)
    queues = Table(title="queues")
    columns = ("queue", "visible", "leased", "delayed", "enqueued", "delivered", "acked",
               "redelivered", "dead_lettered", "dropped")
    for column in columns:
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for name, queue in broker_stats.queues.items():
        queues.add_row(name, *(str(getattr(queue, c)) for c in columns[1:-1]),
                       str(sum(queue.dropped.values())))
    console.print(queues)
    server = Table(title="server (connections)")
    server.add_column("counter")
    server.add_column("value", justify="right")
    for key, value in sorted(server_stats.items()):
        server.add_row(key, str(value))
    console.print(server)


@cli.command("create-topic")
@endpoint_option
@click.argument("name")
@click.option("--fifo", is_flag=True, help="FIFO topic (messages need a group id).")
@click.option("--content-dedup", is_flag=True, help="Deduplicate by body hash.")
@click.option("--dedup-window", type=float, default=300.0, show_default=True, help="Seconds.")
def create_topic(endpoint: str | None, name: str, fifo: bool, content_dedup: bool,
                 dedup_window: float) -> None:
    """Create topic NAME (a no-op if it exists)."""
    with _connected(endpoint) as client:
        client.create_topic(name, fifo=fifo, content_dedup=content_dedup,
                            dedup_window=dedup_window)
    click.echo(f"topic {name}")


@cli.command("create-queue")
@endpoint_option
@click.argument("name")
@click.option("--visibility-timeout", type=float, default=30.0, show_default=True,
              help="Lease seconds.")
@click.option("--max-receive-count", type=int, default=None, help="Deliveries before DLQ.")
@click.option("--dead-letter-queue", default=None, help="Name of the dead-letter queue.")
@click.option("--delay", type=float, default=0.0, show_default=True, help="Seconds.")
@click.option("--max-messages", type=int, default=None, help="Bound on messages held.")
@click.option("--max-bytes", type=int, default=None, help="Bound on bytes held.")
@click.option("--max-message-size", type=int, default=1_048_576, show_default=True,
              help="Bytes.")
@click.option("--retention", type=float, default=345_600.0, show_default=True,
              help="Seconds.")
@click.option("--overflow", type=click.Choice(["reject", "drop_oldest", "dead_letter", "hold"]),
              default="reject", show_default=True)
@click.option("--max-priority", type=int, default=0, show_default=True)
@click.option("--fifo", is_flag=True, help="Strict order per group id.")
@click.option("--content-dedup", is_flag=True, help="Deduplicate by body hash.")
@click.option("--dedup-window", type=float, default=300.0, show_default=True, help="Seconds.")
@click.option("--redelivery-backoff", default=None,
              help="Comma-separated seconds waited before redelivery 1, 2, ...")
def create_queue(endpoint: str | None, name: str, redelivery_backoff: str | None,
                 **settings: Any) -> None:
    """Create queue NAME with the given settings (a no-op if equal ones exist)."""
    if redelivery_backoff:
        settings["redelivery_backoff"] = tuple(
            float(part) for part in redelivery_backoff.split(","))
    with _connected(endpoint) as client:
        client.create_queue(name, **settings)
    click.echo(f"queue {name}")


@cli.command()
@endpoint_option
@click.argument("topic")
@click.argument("queue")
@click.option("--filter-policy", default=None, help="SNS filter policy JSON.")
@click.option("--filter-scope", type=click.Choice(["attributes", "body"]),
              default="attributes", show_default=True)
def subscribe(endpoint: str | None, topic: str, queue: str, filter_policy: str | None,
              filter_scope: str) -> None:
    """Subscribe QUEUE to TOPIC (a name or pattern); prints the subscription id."""
    with _connected(endpoint) as client:
        subscription_id = client.subscribe(topic, queue, filter_policy=filter_policy,
                                           filter_scope=filter_scope)
    click.echo(f"subscription {subscription_id}")


@cli.command()
@endpoint_option
@click.argument("subscription_id", type=int)
def unsubscribe(endpoint: str | None, subscription_id: int) -> None:
    """Remove subscription SUBSCRIPTION_ID (as printed by subscribe)."""
    with _connected(endpoint) as client:
        client.unsubscribe(subscription_id)
    click.echo(f"unsubscribed {subscription_id}")


@cli.command()
@endpoint_option
@click.argument("queue")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(endpoint: str | None, queue: str, yes: bool) -> None:
    """Remove every message of QUEUE (visible, leased and delayed); prints how many."""
    if not yes:
        click.confirm(f"Remove every message of queue {queue}?", abort=True)
    with _connected(endpoint) as client:
        removed = client.purge(queue)
    click.echo(f"purged {removed} messages from {queue}")


@cli.command()
@endpoint_option
@click.argument("dead_letter_queue", metavar="DLQ")
@click.option("--to", "to", default=None,
              help="Queue to move every message to (default: each message's source queue).")
@click.option("--max-messages", "-n", type=int, default=None,
              help="Move at most N messages (default: all).")
def redrive(endpoint: str | None, dead_letter_queue: str, to: str | None,
            max_messages: int | None) -> None:
    """Move dead-lettered messages of DLQ back to their source queues (or to --to)."""
    with _connected(endpoint) as client:
        moved = client.redrive(dead_letter_queue, to=to, max_messages=max_messages)
    click.echo(f"redrove {moved} messages from {dead_letter_queue}"
               + (f" to {to}" if to else ""))


@cli.command("delete-queue")
@endpoint_option
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def delete_queue(endpoint: str | None, name: str, yes: bool) -> None:
    """Delete queue NAME with its messages and subscriptions."""
    if not yes:
        click.confirm(f"Delete queue {name} and its messages?", abort=True)
    with _connected(endpoint) as client:
        client.delete_queue(name)
    click.echo(f"deleted queue {name}")


@cli.command("delete-topic")
@endpoint_option
@click.argument("name")
def delete_topic(endpoint: str | None, name: str) -> None:
    """Delete topic NAME and its subscriptions (messages already queued stay)."""
    with _connected(endpoint) as client:
        client.delete_topic(name)
    click.echo(f"deleted topic {name}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the cross-process fan-out demo (options: see fastfanout demo -- --help)."""
    from fastfanout.demo import main as demo_main

    sys.exit(demo_main(list(args)))


def main() -> None:
    """Console-script entry point (``fastfanout``)."""
    cli()
