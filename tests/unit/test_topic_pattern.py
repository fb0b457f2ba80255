"""NATS-style topic patterns: '*' is one token, '>' is one or more trailing tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfanout.errors import InvalidArgument
from fastfanout.semantics.topic_pattern import (
    PatternIndex,
    TopicNames,
    is_pattern,
    pattern_matches,
    validate_pattern,
)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("orders", "orders", True),
        ("orders", "orders.eu", False),
        ("orders.eu", "orders.us", False),
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.eu.created", False),
        ("*.created", "orders.created", True),
        ("*.created", "created", False),
        ("orders.*.created", "orders.eu.created", True),
        ("orders.*.created", "orders.eu.deleted", False),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.created.v2", True),
        ("orders.>", "orders", False),
        ("orders.>", "payments.eu", False),
        (">", "orders", True),
        (">", "orders.eu", True),
        ("*", "orders", True),
        ("*", "orders.eu", False),
        ("*.>", "orders", False),
        ("*.>", "orders.eu", True),
        ("orders.*", "orders.", False),
        ("orders.>", "orders..x", False),
        ("orders.eu", "orders.*", False),
    ],
)
def test_pattern_matches(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("", "must not be empty"),
        ("orders..eu", "empty token at position 1"),
        (".orders", "empty token at position 0"),
        ("orders.", "empty token at position 1"),
        ("orders.>.eu", "'>' may only be the last token"),
        (">.x", "'>' may only be the last token"),
        ("ord*", "mixes a wildcard"),
        ("orders.eu>", "mixes a wildcard"),
        ("orders.**", "mixes a wildcard"),
        ("orders.e u.*", "has a character no topic name has"),
        ("a.*." + "b" * 300, "no topic name \\(at most 256\\) could match it"),
    ],
)
def test_invalid_patterns(pattern: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        validate_pattern(pattern)
    with pytest.raises(InvalidArgument):
        pattern_matches(pattern, "orders")


def test_pattern_must_be_a_string() -> None:
    with pytest.raises(InvalidArgument, match="must be a str"):
        validate_pattern(b"orders")  # type: ignore[arg-type]


def test_a_pattern_is_checked_once_and_a_malformed_one_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fastfanout.semantics.topic_pattern as module

    checked: list[str] = []
    real = module.validate_pattern

    def counting(pattern: str) -> None:
        checked.append(pattern)
        real(pattern)

    monkeypatch.setattr(module, "validate_pattern", counting)
    pattern = "checked-once.*.>"   # a pattern no other test matches with
    assert pattern_matches(pattern, "checked-once.a.b")
    assert not pattern_matches(pattern, "checked-once.a")
    assert pattern_matches(pattern, "checked-once.x.y.z")
    assert checked == [pattern]
    for _ in range(2):   # the refusal is not kept: it raises each time
        with pytest.raises(InvalidArgument, match="mixes a wildcard"):
            pattern_matches("checked-once.a*", "checked-once.a")
    assert checked.count("checked-once.a*") == 2
    with pytest.raises(InvalidArgument, match="must be a str"):
        pattern_matches(["orders"], "orders")  # type: ignore[arg-type]


def test_a_str_subclass_is_a_pattern_too() -> None:
    class Name(str):
        pass

    assert pattern_matches(Name("orders.*"), "orders.eu")
    assert not pattern_matches(Name("orders.*"), "orders")


def test_valid_patterns_pass() -> None:
    for pattern in ["orders", "orders.*", "orders.>", "*", ">", "*.*.>", "a-b_c.d:e"]:
        validate_pattern(pattern)


def test_is_pattern() -> None:
    assert is_pattern("orders.*")
    assert is_pattern("orders.>")
    assert is_pattern(">")
    assert not is_pattern("orders.eu")
    assert not is_pattern("ord*")  # not a whole-token wildcard


# Topic names may have empty tokens ("a..b", ".a"): check_name allows any '.'.
name_tokens = st.sampled_from(["a", "b", "c", ""])
topic_names = st.lists(name_tokens, min_size=1, max_size=4).map(".".join).filter(bool)
patterns = st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=0, max_size=3).flatmap(
    lambda head: st.sampled_from([head, [*head, ">"]])).filter(bool).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), topic_names), max_size=30),
       st.lists(st.tuples(st.booleans(), patterns), max_size=20))
def test_the_indexes_agree_with_pattern_matches(
    name_changes: list[tuple[bool, str]], pattern_changes: list[tuple[bool, str]]
) -> None:
    names = TopicNames()
    expected_names: dict[str, None] = {}
    for add, name in name_changes:
        if add:
            names.add(name)
            expected_names.setdefault(name, None)
        else:
            assert names.remove(name) is (expected_names.pop(name, 0) is None)
    index = PatternIndex()
    expected_patterns: dict[int, str] = {}
    for key, (add, pattern) in enumerate(pattern_changes):
        if add or not expected_patterns:
            index.add(pattern, key)
            expected_patterns[key] = pattern
        else:
            old_key = min(expected_patterns)
            assert index.remove(expected_patterns.pop(old_key), old_key)
            assert not index.remove(pattern, key)   # never added
    assert len(names) == len(expected_names) and len(index) == len(expected_patterns)
    for pattern in [*expected_patterns.values(), "a.>", "*", ">"]:
        assert names.matching(pattern) == [
            name for name in expected_names if pattern_matches(pattern, name)]
    for name in [*expected_names, "a", "a.b.c", "a..b", ".a"]:
        assert index.matching(name) == sorted(
            key for key, pattern in expected_patterns.items() if pattern_matches(pattern, name))
