"""NATS-style topic patterns: '*' is one token, '>' is one or more trailing tokens."""

from __future__ import annotations

import pytest

from fastfanout.errors import InvalidArgument
from fastfanout.semantics.topic_pattern import is_pattern, pattern_matches, validate_pattern


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


def test_valid_patterns_pass() -> None:
    for pattern in ["orders", "orders.*", "orders.>", "*", ">", "*.*.>", "a-b_c.d:e"]:
        validate_pattern(pattern)


def test_is_pattern() -> None:
    assert is_pattern("orders.*")
    assert is_pattern("orders.>")
    assert is_pattern(">")
    assert not is_pattern("orders.eu")
    assert not is_pattern("ord*")  # not a whole-token wildcard
