"""A broker's topology as a document: export, import, conflicts and updates
(fastfanout.definitions, docs/semantics.md "Definitions")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastfanout import AlreadyExists, Broker, InvalidArgument, NotFound
from fastfanout.definitions import (
    EXPORT_ATTEMPTS,
    check_definitions,
    export_definitions,
    import_definitions,
)
from fastfanout.records import ExponentialBackoff
from fastfanout.settings import TopicSettings


def topology(broker: Broker) -> Broker:
    broker.create_topic("orders")
    broker.create_topic("jobs.fifo", fifo=True, content_dedup=True, dedup_window=60)
    broker.create_queue("dead")
    broker.create_queue("billing", dead_letter_queue="dead", max_receive_count=3,
                        overflow="dead_letter", max_messages=10, visibility_timeout=5)
    broker.create_queue("audit", redelivery_backoff=ExponentialBackoff(0.5, 3, 60),
                        max_priority=5)
    broker.create_queue("work.fifo", fifo=True, redelivery_backoff=(1, 2, 3))
    broker.subscribe("orders", "billing", filter_policy={"kind": ["new"]})
    broker.subscribe("orders.*", "audit", filter_policy={"n": [{"numeric": [">", 1]}]},
                     filter_scope="body")
    broker.subscribe("jobs.fifo", "work.fifo")
    return broker


def everything(broker: Broker) -> tuple[object, ...]:
    """The topology as the broker's own calls read it."""
    subscriptions = sorted((s.topic, s.queue, s.filter_policy, s.filter_scope) for s in (
        broker.subscription(sid) for sid in broker.list_subscriptions()))
    return ({name: broker.topic_settings(name) for name in broker.list_topics()},
            {name: broker.queue_settings(name) for name in broker.list_queues()},
            subscriptions)


def test_topic_settings_are_what_create_topic_took() -> None:
    with Broker() as broker:
        broker.create_topic("jobs.fifo", fifo=True, dedup_window=60)
        assert broker.topic_settings("jobs.fifo") == TopicSettings(True, False, 60)
        with pytest.raises(NotFound):
            broker.topic_settings("missing")
        with pytest.raises(InvalidArgument):
            broker.topic_settings("bad name")


def test_a_round_trip_makes_the_same_topology() -> None:
    with Broker() as source, Broker() as target:
        document = export_definitions(topology(source))
        assert document["fastfanout_definitions"] == 1
        assert document["queues"]["dead"] == {}   # defaults left out
        assert document["queues"]["audit"]["redelivery_backoff"] == {
            "initial": 0.5, "multiplier": 3.0, "maximum": 60.0}
        json.dumps(document)   # JSON as it is
        result = import_definitions(target, json.dumps(document))
        assert result.created[:2] == ["topic jobs.fifo", "topic orders"]
        assert len(result.created) == 9 and result.updated == [] and result.unchanged == 0
        assert everything(target) == everything(source)
        assert export_definitions(target) == document
        # again: nothing to do
        again = import_definitions(target, document)
        assert (again.created, again.updated, again.unchanged) == ([], [], 9)


def test_a_dead_letter_queue_may_come_after_its_queue_or_be_held_already() -> None:
    document = {"fastfanout_definitions": 1, "queues": {
        "a": {"dead_letter_queue": "z", "overflow": "dead_letter", "max_messages": 1},
        "b": {"dead_letter_queue": "held"}, "z": {}}}
    with Broker() as broker:
        broker.create_queue("held")
        import_definitions(broker, document)
        assert broker.queue_settings("a").dead_letter_queue == "z"
        assert broker.queue_settings("a").overflow == "dead_letter"
        assert broker.queue_settings("b").dead_letter_queue == "held"


def test_conflicts_change_nothing_and_update_changes_what_may_change() -> None:
    with Broker() as source, Broker() as target:
        document = export_definitions(topology(source))
        import_definitions(target, document)
        target.set_queue_settings("billing", max_messages=20)
        sid = next(sid for sid, pair in target.list_subscriptions().items()
                   if pair == ("orders", "billing"))
        target.set_filter_policy(sid, {"kind": ["old"]})
        before = everything(target)
        with pytest.raises(AlreadyExists, match=r"2 conflicts, nothing changed: queue "
                           r"'billing' exists with other settings: max_messages; "
                           r"subscription orders -> billing"):
            import_definitions(target, document)
        assert everything(target) == before
        planned = import_definitions(target, document, update=True, dry_run=True)
        assert planned.updated == ["queue billing: max_messages",
                                   "subscription orders -> billing: filter policy"]
        assert everything(target) == before   # a dry run
        done = import_definitions(target, document, update=True)
        assert done.updated == planned.updated and done.unchanged == 7
        assert everything(target) == everything(source)


def test_what_can_never_change_is_a_conflict_even_with_update() -> None:
    with Broker() as broker:
        broker.create_topic("t", content_dedup=True)
        broker.create_queue("q", max_priority=3)
        document = {"fastfanout_definitions": 1, "topics": {"t": {}},
                    "queues": {"q": {"max_priority": 4}, "new": {}}}
        with pytest.raises(AlreadyExists, match=r"topic 't' exists with other settings.*"
                           r"queue 'q' exists with other settings: max_priority "
                           r"\(max_priority can never change\)"):
            import_definitions(broker, document, update=True)
        assert broker.list_queues() == ["q"]


@pytest.mark.parametrize(("document", "error", "match"), [
    ("{", InvalidArgument, "not JSON"),
    ({"topics": {}}, InvalidArgument, "fastfanout_definitions"),
    ({"fastfanout_definitions": 2}, InvalidArgument, "reads format 1"),
    ({"fastfanout_definitions": 1, "queues": {"q": {"colour": 1}}}, InvalidArgument,
     "unknown field `colour`"),
    ({"fastfanout_definitions": 1, "queues": {"q": {"visibility_timeout": "x"}}},
     InvalidArgument, r"Expected `float`, got `str` - at `\$.queues\[...\].visibility"),
    ({"fastfanout_definitions": 1, "queues": {"q": {"visibility_timeout": -1}}},
     InvalidArgument, "queue 'q': visibility_timeout"),
    ({"fastfanout_definitions": 1, "topics": {"bad name": {}}}, InvalidArgument,
     "topic name 'bad name'"),
    # a later topic's bad setting: the first one was created anyway until the review
    ({"fastfanout_definitions": 1, "topics": {"x": {}, "y": {"dedup_window": 0}}},
     InvalidArgument, "definitions: topic 'y': dedup_window"),
    ({"fastfanout_definitions": 1, "queues": {"a": {"dead_letter_queue": "b"},
                                              "b": {"dead_letter_queue": "a"}}},
     InvalidArgument, r"lead back round \(a -> b -> a\)"),
    ({"fastfanout_definitions": 1, "queues": {"q": {}},
      "subscriptions": [{"topic": "t.**.x", "queue": "q"}]}, InvalidArgument,
     r"definitions: subscription t\.\*\*\.x -> q"),
    ({"fastfanout_definitions": 1, "queues": {"q": {"dead_letter_queue": "nope"}}},
     NotFound, "dead_letter_queue 'nope' is neither defined nor on the broker"),
    ({"fastfanout_definitions": 1, "queues": {"q": {}},
      "subscriptions": [{"topic": "t", "queue": "q"}]}, NotFound, "topic 't' is neither"),
    ({"fastfanout_definitions": 1, "topics": {"t": {}},
      "subscriptions": [{"topic": "t", "queue": "q"}]}, NotFound, "queue 'q' is neither"),
    ({"fastfanout_definitions": 1, "topics": {"t": {}}, "queues": {"q": {}},
      "subscriptions": [{"topic": "t", "queue": "q", "filter_policy": {"k": "v"}}]},
     InvalidArgument, "subscription t -> q"),
    ({"fastfanout_definitions": 1, "topics": {"t": {}}, "queues": {"q": {}},
      "subscriptions": [{"topic": "t", "queue": "q", "filter_scope": "headers"}]},
     InvalidArgument, "filter_scope"),
    ({"fastfanout_definitions": 1, "queues": {"q": {"durable": True}}}, InvalidArgument,
     "keeps nothing on disk"),
    ({"fastfanout_definitions": 1, "topics": {"t.fifo": {"fifo": True}}, "queues": {"q": {}},
      "subscriptions": [{"topic": "t.fifo", "queue": "q"}]}, InvalidArgument,
     "the topic is FIFO and the queue is not"),
    ({"fastfanout_definitions": 1, "queues": {"q": {}}, "subscriptions": [
        {"topic": "held", "queue": "q"}, {"topic": "held", "queue": "q"}]},
     InvalidArgument, "defined twice"),
])
def test_bad_documents_change_nothing(document: object, error: type[Exception],
                                      match: str) -> None:
    with Broker() as broker:
        broker.create_topic("held")
        before = everything(broker)
        with pytest.raises(error, match=match):
            import_definitions(broker, document)   # type: ignore[arg-type]
        with pytest.raises(error, match=match):
            import_definitions(broker, document, dry_run=True)   # type: ignore[arg-type]
        assert everything(broker) == before
        if error is InvalidArgument and "neither" not in match and "disk" not in match \
                and "FIFO" not in match and "lead back" not in match:
            with pytest.raises(InvalidArgument, match=match):   # found without a broker
                check_definitions(document)   # type: ignore[arg-type]


def test_a_dead_letter_loop_through_a_held_queue_changes_nothing() -> None:
    with Broker() as broker:
        broker.create_queue("b")
        broker.create_queue("c", dead_letter_queue="b")
        before = everything(broker)
        document = {"fastfanout_definitions": 1,
                    "queues": {"b": {"dead_letter_queue": "c"}, "new": {}}}
        with pytest.raises(InvalidArgument, match=r"\(b -> c -> b\)"):
            import_definitions(broker, document, update=True)
        assert everything(broker) == before


def test_the_text_of_an_export_survives_an_import() -> None:
    with Broker() as source, Broker() as target:
        source.create_topic("t", dedup_window=60)   # whole numbers, as Python callers give
        source.create_queue("q", visibility_timeout=10, redelivery_backoff=(1, 2))
        text = json.dumps(export_definitions(source), indent=2)
        import_definitions(target, text)
        assert json.dumps(export_definitions(target), indent=2) == text


def test_a_queue_without_durable_is_as_its_broker_makes_them(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path / "data") as durable:
        durable.create_queue("kept")   # durable: this broker's default
        durable.create_queue("passing", durable=False)
        document = export_definitions(durable)
    assert document["queues"] == {"kept": {}, "passing": {"durable": False}}
    with Broker() as memory:   # the same document, no option needed
        assert import_definitions(memory, document).created == ["queue kept",
                                                                "queue passing"]
        assert memory.queue_settings("kept").durable is False
        assert import_definitions(memory, document).unchanged == 2   # settled as held
    with Broker(data_dir=tmp_path / "again") as durable:
        import_definitions(durable, document)
        assert durable.queue_settings("kept").durable is True
        assert durable.queue_settings("passing").durable is False
    with Broker(data_dir=tmp_path / "forced") as durable:
        import_definitions(durable, document, durable=True)
        assert durable.queue_settings("passing").durable is True


@pytest.mark.parametrize("document, where", [
    ({"fastfanout_definitions": 1, "queues": {"good": {}, "bad": {"visibility_timeout": "x"}}},
     "`$.queues['bad'].visibility_timeout`"),
    ({"fastfanout_definitions": 1, "topics": {"t1": {"bogus": 1}}}, "`$.topics['t1']`"),
    ('{"fastfanout_definitions": 1, "queues": {"q": {"max_messages": "many"}}}',
     "`$.queues['q'].max_messages`"),
])
def test_a_form_error_names_the_entry(document: object, where: str) -> None:
    """msgspec wrote a map's key as ``[...]``: the error said ``$.queues[...]``, not
    which queue (the docs promise the path)."""
    with pytest.raises(InvalidArgument) as raised:
        import_definitions(Broker(), document)  # type: ignore[arg-type]
    assert where in str(raised.value), raised.value


class _Churning:
    """A broker whose topology changes while an export reads it.

    ``changes`` run, one each, at the first calls of ``queue_settings``.
    """

    def __init__(self, broker: Broker, changes: list[Any]) -> None:
        self._broker = broker
        self._changes = changes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def queue_settings(self, name: str) -> Any:
        if self._changes:
            self._changes.pop(0)()
        return self._broker.queue_settings(name)


def test_an_export_reads_again_a_topology_that_changed_under_it() -> None:
    # a queue deleted between the list and its settings failed the export (NotFound);
    # a queue created meanwhile was left out of a document that named the others
    with Broker() as broker:
        for name in ("a", "b", "c"):
            broker.create_queue(name)
        changes = [lambda: broker.delete_queue("b"), lambda: broker.create_queue("d")]
        document = export_definitions(_Churning(broker, changes))
        assert list(document["queues"]) == ["a", "c", "d"]
        assert "_ids" not in document


def test_an_export_of_a_topology_that_never_settles_fails_in_one_line() -> None:
    with Broker() as broker:
        broker.create_queue("a")
        names = (f"q{n}" for n in range(1000))
        changes = [lambda: broker.create_queue(next(names)) for _ in range(100)]
        with pytest.raises(NotFound, match=f"changed during each of {EXPORT_ATTEMPTS} "):
            export_definitions(_Churning(broker, changes))
