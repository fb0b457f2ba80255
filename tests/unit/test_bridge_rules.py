"""The bridge's rule file and header mapping, checked without NATS or a broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastfanout.bridges import load_rules
from fastfanout.bridges.jetstream import (
    HEADER_MESSAGE_ID,
    decode_attributes,
    encode_attributes,
    message_headers,
    subject_covers,
)
from fastfanout.errors import InvalidArgument
from fastfanout.server.config import load_config

GOOD = """
servers = ["nats://127.0.0.1:4222"]
[[export]]
name = "orders"
topic = "orders"
stream = "ORDERS"
[[import]]
name = "back"
stream = "ORDERS"
queue = "orders-in"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return str(path)


def test_a_good_file_and_its_defaults(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, GOOD))
    (export,), (imported,) = rules.export, rules.import_
    assert export.queue_name == "bridge.export.orders"
    assert export.subject_name == "fastfanout.orders"
    assert export.max_in_flight == 4096 and export.publish_timeout == 5.0
    assert imported.durable_name == "back"
    assert imported.dead_letter_name == "bridge.import.back.dlq"


def test_a_pattern_rule_publishes_on_its_prefix_and_each_topic(tmp_path: Path) -> None:
    # the subject of a pattern rule is a prefix (default: the stream's name); the
    # stream it makes takes <prefix>.>; a plain rule keeps its one subject
    text = GOOD.replace('topic = "orders"', 'topic = "orders.>"')
    (export,) = load_rules(write(tmp_path, text)).export
    assert export.pattern and export.subject_name == "ORDERS"
    assert export.stream_subject == "ORDERS.>"
    assert export.subject_for("orders.eu.paris") == "ORDERS.orders.eu.paris"
    assert export.subject_for("orders:x.y-z") == "ORDERS.orders:x.y-z"
    # no topic known (a message sent to the queue), or a topic no subject can end with
    assert [export.subject_for(topic) for topic in (None, "orders..eu", "orders.")] == [
        None, None, None]
    (prefixed,) = load_rules(write(tmp_path, text.replace(
        'stream = "ORDERS"\n[[import]]', 'stream = "ORDERS"\nsubject = "from-a"\n[[import]]'))
        ).export
    assert prefixed.subject_for("orders.eu") == "from-a.orders.eu"
    assert prefixed.stream_subject == "from-a.>"
    (plain,) = load_rules(write(tmp_path, GOOD)).export
    assert not plain.pattern and plain.stream_subject == "fastfanout.orders"
    assert plain.subject_for(None) == plain.subject_for("x") == "fastfanout.orders"


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD + "bogus = 1\n", "unknown field `bogus`"),
    (GOOD.replace('queue = "orders-in"', 'queue = "q"\ntopic = "t"'), "exactly one of"),
    (GOOD.replace('queue = "orders-in"', ""), "exactly one of"),
    (GOOD.replace('topic = "orders"', 'topic = "orders.>"\nsubject = "a.*"'),
     "not a NATS subject prefix"),
    (GOOD.replace('topic = "orders"', 'topic = "orders.>"\nsubject = "a.>"'),
     "not a NATS subject prefix"),
    (GOOD.replace('topic = "orders"', 'topic = "orders"\nsubject = "a."'),
     "not a NATS subject "),
    (GOOD.replace('name = "back"', 'name = "orders"'), "two rules have this name"),
    (GOOD.replace('stream = "ORDERS"\n[[import]]', 'stream = "OR.DERS"\n[[import]]'),
     "stream"),
    (GOOD.replace("[[import]]", "batch = 0\n[[import]]"), "export"),
    (GOOD.replace('queue = "orders-in"', 'queue = "orders-in"\nbatch = 0'), "batch"),
    (GOOD.replace("nats://127.0.0.1:4222", "http://x"), "servers"),
    ('servers = ["nats://h:1"]\n', r"no \[\[export\]\] or \[\[import\]\] rule"),
    ("servers = [", "not valid TOML"),
])
def test_bad_files_are_refused_with_one_line(tmp_path: Path, text: str, expected: str
                                             ) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument, match=expected) as raised:
        load_rules(path)
    assert str(raised.value).startswith(path) and "\n" not in str(raised.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the bridge rule file"):
        load_rules(str(tmp_path / "absent.toml"))


def test_the_config_file_names_the_rule_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('bridge = "bridge.toml"\n')
    assert load_config(str(config)).bridge == "bridge.toml"
    assert load_config(str(config), {"bridge": "other.toml"}).bridge == "other.toml"


def test_headers_carry_id_attributes_group_priority_and_dedup_id() -> None:
    message = SimpleNamespace(id=42, attributes={"n": 1, "f": 0.5, "b": b"\x00", "l": ["x"]},
                              group_id="g", priority=7, dedup_id="d")
    headers = message_headers("host-a", message)
    assert headers[HEADER_MESSAGE_ID] == "host-a:42"
    assert headers["Fastfanout-Group-Id"] == "g"
    assert headers["Fastfanout-Priority"] == "7"
    assert headers["Fastfanout-Dedup-Id"] == "d"
    assert decode_attributes(headers["Fastfanout-Attributes"]) == message.attributes
    bare = message_headers("h", SimpleNamespace(id=1, attributes={}, group_id=None,
                                                priority=0, dedup_id=None))
    assert bare == {HEADER_MESSAGE_ID: "h:1"}


@pytest.mark.parametrize("text", ["{oops", "[1]", '{"b": {"base64": "!!"}}'])
def test_malformed_attribute_headers_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_attributes(text)
    assert decode_attributes(encode_attributes({})) == {}


BLOCK_NATS = """
import sys
sys.modules["nats"] = None   # as if nats-py were not installed
from fastfanout.cli import main
sys.argv = ["fastfanout", "serve", "--in-memory", "--endpoint", sys.argv[1], "--bridge",
            sys.argv[2]]
main()
"""


def test_serve_bridge_without_nats_py_says_what_to_install(tmp_path: Path) -> None:
    rules = write(tmp_path, GOOD)
    done = subprocess.run([sys.executable, "-c", BLOCK_NATS, f"ipc://{tmp_path}/b.sock",
                           rules], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "pip install 'fastfanout[bridge]'" in done.stderr


def test_serve_bridge_with_a_bad_rule_file_fails_before_binding(tmp_path: Path) -> None:
    rules = write(tmp_path, GOOD + "bogus = 1\n")
    done = subprocess.run([sys.executable, "-m", "fastfanout", "serve", "--in-memory",
                           "--endpoint", f"ipc://{tmp_path}/b.sock", "--bridge", rules],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {rules}: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "b.sock").exists()


LOOP = """
servers = ["nats://127.0.0.1:4222"]
[[export]]
name = "out"
topic = "orders.>"
stream = "ORDERS"
[[import]]
name = "in"
stream = "ORDERS"
topic = "orders.in"
"""


# until 2026-12-05 each of these files was taken, and the bridge then looped for ever
# (one publish became 7,000 messages in 4 s), split one queue or one durable consumer
# between two rules, or retried a connect that could never succeed
@pytest.mark.parametrize(("text", "expected"), [
    (LOOP, r"'orders.in' is exported by \[\[export\]\] 'out' into stream 'ORDERS'"),
    (LOOP.replace('topic = "orders.in"', 'topic = "orders.in"\nfilter_subject = '
                  '"ORDERS.orders.*"'), "would go round for ever"),
    (LOOP.replace('topic = "orders.in"', 'queue = "bridge.export.out"'),
     r"\[\[import\]\] 'in' queue: 'bridge.export.out' is exported"),
    (GOOD.replace('queue = "orders-in"', 'queue = "q"\ndead_letter_queue = "q"'),
     "is the rule's target"),
    (GOOD.replace('queue = "orders-in"', 'queue = "q"\ndead_letter_queue = '
                  '"bridge.export.orders"'), "is a queue of"),
    (GOOD + '[[import]]\nname = "again"\nstream = "ORDERS"\ndurable = "back"\nqueue = "x"\n',
     "also the consumer of"),
    (GOOD + '[[export]]\nname = "two"\ntopic = "t"\nstream = "S"\nqueue = '
     '"bridge.export.orders"\n', "also the queue of"),
    (GOOD.replace("[[export]]", 'user = "bob"\n[[export]]'), "user and password go together"),
    (GOOD.replace("[[export]]", 'password = "pw"\n[[export]]'), "user and password go"),
    (GOOD.replace("[[export]]", 'user = "u"\npassword = "p"\ntoken = "t"\n[[export]]'),
     "one way to authenticate"),
    (GOOD.replace("[[export]]", 'credentials = "absent.creds"\n[[export]]'),
     "credentials: cannot read 'absent.creds': No such file"),
    (GOOD.replace("4222", "99999"), "a port from 1 to 65535"),
])
def test_rules_that_loop_share_or_cannot_connect_are_refused(
        tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument, match=expected) as raised:
        load_rules(path)
    assert str(raised.value).startswith(path) and "\n" not in str(raised.value)


@pytest.mark.parametrize("text", [
    LOOP.replace('topic = "orders.in"', 'topic = "inbound"'),      # another topic
    LOOP.replace('stream = "ORDERS"\ntopic = "orders.in"',          # another stream
                 'stream = "OTHER"\ntopic = "orders.in"'),
    LOOP.replace('topic = "orders.in"',                              # not its subjects
                 'topic = "orders.in"\nfilter_subject = "elsewhere.>"'),
    LOOP.replace('topic = "orders.in"',          # the export uses ORDERS.orders.> only
                 'topic = "orders.in"\nfilter_subject = "ORDERS.other"'),
])
def test_an_import_beside_an_export_that_cannot_loop_is_taken(tmp_path: Path, text: str
                                                              ) -> None:
    load_rules(write(tmp_path, text))


BLOCK_NKEYS = """
import sys
sys.modules["nkeys"] = None   # as if nats-py's nkeys extra were not installed
from fastfanout.cli import main
sys.argv = ["fastfanout", "serve", "--in-memory", "--endpoint", sys.argv[1], "--bridge",
            sys.argv[2]]
main()
"""


def test_serve_bridge_with_credentials_and_no_nkeys_says_what_to_install(
        tmp_path: Path) -> None:
    # until 2026-12-05 every connect failed with "No module named 'nkeys'", retried for ever
    (tmp_path / "user.creds").write_text("")
    rules = write(tmp_path, GOOD.replace("[[export]]", f'credentials = '
                                         f'"{tmp_path / "user.creds"}"\n[[export]]'))
    done = subprocess.run([sys.executable, "-c", BLOCK_NKEYS, f"ipc://{tmp_path}/b.sock",
                           rules], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "pip install 'nats-py[nkeys]'" in done.stderr
    assert not (tmp_path / "b.sock").exists()


@pytest.mark.parametrize(("taken", "published", "covers"), [
    ("fastfanout.orders", "fastfanout.orders", True), ("fastfanout.*", "fastfanout.orders", True),
    ("fastfanout.>", "fastfanout.orders", True), (">", "ORDERS.>", True),
    ("ORDERS.>", "ORDERS.>", True), ("ORDERS.*", "ORDERS.>", False),
    ("other.>", "fastfanout.orders", False), ("fastfanout", "fastfanout.orders", False),
    ("fastfanout.orders.x", "fastfanout.orders", False), ("a.b", "a.*", False),
])
def test_a_stream_subject_covers_what_a_rule_publishes(taken: str, published: str,
                                                       covers: bool) -> None:
    assert subject_covers(taken, published) is covers


def test_tls_files_that_cannot_be_used_are_refused(tmp_path: Path) -> None:
    # until 2026-12-05 a rule file could name no certificate authority nor client
    # certificate: tls_ca = ... was an unknown key, and a NATS server with a private CA
    # could not be reached; now each file is read when the rule file is checked
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    for line, expected in [
            ('tls_ca = "absent.pem"', "tls_ca: cannot read 'absent.pem': No such file"),
            (f'tls_ca = "{tmp_path}"', "tls_ca: .* Is a directory"),
            (f'tls_ca = "{tmp_path / "garbage.pem"}"', "not a usable PEM certificate"),
            (f'tls_cert = "{tmp_path / "garbage.pem"}"', "tls_cert and tls_key go together"),
            (f'tls_cert = "{tmp_path / "garbage.pem"}"\ntls_key = "{tmp_path / "garbage.pem"}"',
             "tls_ca, tls_cert, tls_key: not a usable PEM")]:
        path = write(tmp_path, GOOD.replace("[[export]]", line + "\n[[export]]"))
        with pytest.raises(InvalidArgument, match=expected) as raised:
            load_rules(path)
        assert str(raised.value).startswith(path) and "\n" not in str(raised.value)


@pytest.mark.parametrize("url", ["nats://h", "tls://nats.example.com:4222",
                                 "nats://[::1]:4222", "nats://user:pw@h:4222"])
def test_server_urls_of_every_form_nats_takes_are_taken(tmp_path: Path, url: str) -> None:
    # the port check of 2026-12-05 must keep IPv6 hosts and credentials in the URL
    assert load_rules(write(tmp_path, GOOD.replace("nats://127.0.0.1:4222", url))
                      ).servers == [url]
