"""Prometheus metrics of a broker server: through a client, over HTTP, and the CLI's
``fastfanout metrics`` and ``fastfanout stats --prometheus`` (docs/metrics.md)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any as Tracker

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastfanout import NotFound
from fastfanout.bench.servers import free_port
from fastfanout.client import connect
from fastfanout.metrics import SERVER_GAUGES, exposition, serve_metrics

DEADLINE = 10.0


def scrape(text: bytes) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Sample name -> labels -> value, read back by prometheus_client's parser."""
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = \
                sample.value
    return samples


def fetch(url: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        assert response.status == 200
        return scrape(response.read())


def test_a_clients_scrape_holds_the_servers_counters(track: Tracker) -> None:
    server = track.server()
    server.stats_sources["bridge"] = lambda: {"orders-out": {
        "messages": 7, "rate": 1.5, "lag": 2, "in_flight": 1, "retries": 0, "errors": 0,
        "duplicates": 0, "dead_lettered": 0, "connected": 1}}
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    client.publish_batch("t", [b"a", b"b", b"c"])
    with pytest.raises(NotFound):
        client.receive("missing")
    client.report_worker({"worker": "app", "pid": 42, "handlers": {"h": {
        "queue": "q", "processed": 3, "in_flight": 1, "p50": 0.25}}})
    # a second report of the same worker, pid and handler (two Workers of one process):
    # one series, not two samples Prometheus would refuse
    track.client(server.endpoint).report_worker({"worker": "app", "pid": 42, "handlers": {
        "h": {"queue": "q", "processed": 2, "p50": 0.5}}})
    # every level named as one is a key the server reports (a renamed key would turn
    # into a counter unseen)
    assert SERVER_GAUGES <= set(client.server_stats())
    samples = scrape(exposition(client))
    assert samples["fastfanout_queue_visible"] == {frozenset({("queue", "q")}): 3}
    assert samples["fastfanout_server_connections"] == {frozenset(): 2}
    assert samples["fastfanout_server_requests_total"][frozenset()] > 0
    assert samples["fastfanout_server_errors_total"] == {frozenset({("code", "not_found")}): 1}
    assert sorted(samples["fastfanout_connection_published_total"].values()) == [0, 3]
    assert "fastfanout_connection_owner" not in samples   # a tag, not a quantity
    handler = frozenset({("worker", "app"), ("pid", "42"), ("handler", "h"), ("queue", "q")})
    assert samples["fastfanout_handler_processed_total"] == {handler: 5}
    assert samples["fastfanout_handler_in_flight"] == {handler: 1}
    assert samples["fastfanout_handler_p50_seconds"] == {handler: 0.5}
    assert "fastfanout_handler_p99_seconds" not in samples   # none reported
    rule = frozenset({("rule", "orders-out")})
    assert samples["fastfanout_bridge_messages_total"] == {rule: 7}
    assert samples["fastfanout_bridge_lag"] == {rule: 2}
    assert samples["fastfanout_up"] == {frozenset(): 1}


def test_a_broker_gone_is_down_and_up_again_when_it_is_back(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint)
    client = connect(endpoint, timeout=2.0)
    track.clients.append(client)
    client.create_topic("t")
    with serve_metrics(client, "127.0.0.1:0") as metrics:
        assert fetch(metrics.url)["fastfanout_up"] == {frozenset(): 1}
        track.stop_server(server)
        down = fetch(metrics.url)   # answered at once, not an HTTP error
        assert down["fastfanout_up"] == {frozenset(): 0}
        assert down["fastfanout_scrape_failures_total"] == {frozenset(): 1}
        assert "fastfanout_topic_published_total" not in down
        track.server(endpoint)   # a new broker on the same endpoint: the client reconnects
        track.wait_until(lambda: fetch(metrics.url)["fastfanout_up"] == {frozenset(): 1},
                         what="the scrape to find the broker back")


def test_cli_metrics_serves_until_sigterm(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.broker_process(endpoint)
    client = track.client(endpoint)
    client.create_queue("q")
    client.send("q", b"x")
    exporter = track.process(["-m", "fastfanout", "metrics", "--endpoint", endpoint,
                              "--listen", "127.0.0.1:0"])
    assert exporter.stdout is not None
    line = exporter.stdout.readline().decode()
    assert line.startswith(f"serving the metrics of {endpoint} at http://127.0.0.1:"), line
    samples = fetch(line.split()[-1])
    assert samples["fastfanout_queue_messages"] == {frozenset({("queue", "q")}): 1}
    assert samples["fastfanout_up"] == {frozenset(): 1}
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(DEADLINE) == 0
    assert exporter.stderr is not None
    assert exporter.stderr.read() == b""


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_cli_metrics_started_before_the_broker_is_down_then_up(track: Tracker,
                                                                kind: str) -> None:
    # a service manager starts the exporter first: it serves fastfanout_up 0 (until
    # now it exited 1 at once, "no broker at ..."), and finds the broker when it comes
    endpoint = track.endpoint(kind)
    exporter = track.process(["-m", "fastfanout", "metrics", "--endpoint", endpoint,
                              "--listen", "127.0.0.1:0"])
    assert exporter.stdout is not None and exporter.stderr is not None
    line = exporter.stdout.readline().decode()
    assert line.startswith(f"serving the metrics of {endpoint} at http://127.0.0.1:"), (
        line, exporter.poll(), exporter.stderr.read() if exporter.poll() is not None else "")
    url = line.split()[-1]
    down = fetch(url)
    assert down["fastfanout_up"] == {frozenset(): 0}
    assert down["fastfanout_scrape_failures_total"][frozenset()] >= 1
    assert "fastfanout_server_connections" not in down
    broker = track.broker_process(endpoint)   # a real `fastfanout serve`, after it
    client = track.client(endpoint)
    client.create_queue("q")
    client.send("q", b"x")
    track.wait_until(lambda: fetch(url)["fastfanout_up"] == {frozenset(): 1}, timeout=30,
                     what="the exporter to find the broker")
    assert fetch(url)["fastfanout_queue_messages"] == {frozenset({("queue", "q")}): 1}
    broker.send_signal(signal.SIGTERM)   # gone again: down, and the exporter stays
    assert broker.wait(DEADLINE) == 0
    track.wait_until(lambda: fetch(url)["fastfanout_up"] == {frozenset(): 0}, timeout=30,
                     what="the exporter to see the broker gone")
    assert exporter.poll() is None
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(DEADLINE) == 0
    assert exporter.stderr.read().decode() == (
        f"no broker answers at {endpoint} yet: scrapes read fastfanout_up 0 until one "
        f"does\n")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastfanout", *args], capture_output=True,
                          text=True, timeout=30)


def one_line_error(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def test_cli_metrics_and_stats_refuse_wrong_input_in_one_line(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.broker_process(endpoint)
    line = one_line_error(run_cli("metrics", "--endpoint", endpoint, "--listen", "nope"), 2)
    assert "HOST:PORT" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_cli("metrics", "--endpoint", endpoint, "--listen",
                                      f"127.0.0.1:{port}"), 1)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    one_line_error(run_cli("stats", "--json", "--prometheus", "--endpoint", endpoint), 2)
    done = run_cli("stats", "--prometheus", "--endpoint", endpoint)
    assert done.returncode == 0, done.stderr
    assert scrape(done.stdout.encode())["fastfanout_up"] == {frozenset(): 1}
    missing = f"ipc://{track.tmp_path}/none.sock"
    # a broker not there yet is no error (the exporter serves fastfanout_up 0: above);
    # a file of the user's at the endpoint's path is: no broker ever answers there
    not_a_socket = track.tmp_path / "notes.txt"
    not_a_socket.write_text("mine")
    line = one_line_error(run_cli("metrics", "--endpoint", f"ipc://{not_a_socket}",
                                  "--listen", "127.0.0.1:0"), 1)
    assert line.startswith(f"error: no broker at ipc://{not_a_socket} ({not_a_socket} is "
                           f"a regular file, not a broker's socket)"), line
    assert not_a_socket.read_text() == "mine"
    # the address is checked first: no broker needed to hear of a typo
    assert "HOST:PORT" in one_line_error(run_cli("metrics", "--endpoint", missing,
                                                 "--listen", "9771"), 2)
    assert "no broker" in one_line_error(run_cli("stats", "--prometheus", "--endpoint",
                                                 missing), 1)


def test_serve_with_metrics_serves_them_from_the_brokers_process(track: Tracker) -> None:
    endpoint = track.endpoint()
    port = free_port()
    broker = track.broker_process(endpoint, "--metrics", f"127.0.0.1:{port}")
    client = track.client(endpoint)
    client.create_topic("t")
    url = f"http://127.0.0.1:{port}/metrics"
    track.wait_until(lambda: fetch(url)["fastfanout_up"] == {frozenset(): 1},
                     what="the served broker's first scrape")
    samples = fetch(url)
    assert samples["fastfanout_topology_topics"] == {frozenset(): 1}
    # its own client counts too (and the probe that waited for the broker may not have
    # ended yet: CI once saw 3)
    assert samples["fastfanout_server_connections"][frozenset()] >= 2
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(DEADLINE) == 0
    with pytest.raises(OSError):
        fetch(url)


def test_serve_with_metrics_refuses_a_bad_or_busy_address_before_it_binds(
        track: Tracker) -> None:
    endpoint = track.endpoint()
    socket_file = endpoint[len("ipc://"):]
    line = one_line_error(run_cli("serve", "--endpoint", endpoint, "--in-memory",
                                  "--metrics", "nope"), 2)
    assert "HOST:PORT" in line
    config = track.tmp_path / "broker.toml"
    config.write_text('metrics = "host:port"\n')
    line = one_line_error(run_cli("serve", "--endpoint", endpoint, "--in-memory",
                                  "--config", str(config)), 1)
    assert line.startswith(f"error: {config}: metrics:")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data_dir = track.tmp_path / "data"
        line = one_line_error(run_cli("serve", "--endpoint", endpoint, "--data-dir",
                                      str(data_dir), "--metrics", f"127.0.0.1:{port}"), 1)
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in line
    assert not Path(socket_file).exists() and not data_dir.exists()
