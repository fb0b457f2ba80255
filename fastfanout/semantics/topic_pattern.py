"""NATS-style subject wildcards for topic names.

Design
------
Topic names are tokens separated by ``.`` (``orders.eu.created``). A pattern is a topic
name in which a whole token may be a wildcard, with the NATS rules:

* ``*`` matches exactly one token (``orders.*`` matches ``orders.eu`` but not
  ``orders`` nor ``orders.eu.created``);
* ``>`` matches one or more trailing tokens and may only be the last token
  (``orders.>`` matches ``orders.eu`` and ``orders.eu.created`` but not ``orders``).

Invariants: wildcards are whole tokens only (``ord*`` is a plain, literal token in NATS;
we refuse it to avoid surprise), no token is empty, and matching is a single left-to-right
pass over the tokens, so it costs O(tokens) with no backtracking.
"""

from __future__ import annotations

import re

from fastfanout.errors import InvalidArgument

__all__ = ["is_pattern", "pattern_matches", "validate_pattern"]

MAX_PATTERN = 256
"""Longest pattern: a topic name's most characters (a longer one could match none)."""
_TOKEN = re.compile(r"[A-Za-z0-9_:\-]+")
SEPARATOR = "."
ONE_TOKEN = "*"
TAIL = ">"


def validate_pattern(pattern: str) -> None:
    """Check that ``pattern`` is a well-formed topic pattern (or plain topic name).

    Args:
        pattern: the pattern, tokens separated by ``.``.

    Raises:
        InvalidArgument: the pattern is not a string, is empty, has an empty token, has
            ``>`` anywhere but as the last token, or mixes a wildcard with other
            characters inside one token.
    """
    if not isinstance(pattern, str):
        raise InvalidArgument(f"topic pattern must be a str, got {type(pattern).__name__}")
    if not pattern:
        raise InvalidArgument("topic pattern must not be empty")
    if len(pattern) > MAX_PATTERN:
        raise InvalidArgument(
            f"topic pattern {pattern[:40]!r}... is {len(pattern)} characters: no topic name "
            f"(at most {MAX_PATTERN}) could match it")
    tokens = pattern.split(SEPARATOR)
    for index, token in enumerate(tokens):
        if not token:
            raise InvalidArgument(
                f"topic pattern {pattern!r} has an empty token at position {index}"
            )
        if token == TAIL:
            if index != len(tokens) - 1:
                raise InvalidArgument(
                    f"topic pattern {pattern!r}: '>' may only be the last token"
                )
        elif token != ONE_TOKEN and (ONE_TOKEN in token or TAIL in token):
            raise InvalidArgument(
                f"topic pattern {pattern!r}: token {token!r} mixes a wildcard with other "
                "characters; '*' and '>' must be whole tokens"
            )
        elif token != ONE_TOKEN and not _TOKEN.fullmatch(token):
            raise InvalidArgument(
                f"topic pattern {pattern!r}: token {token!r} has a character no topic name "
                "has (names use A-Z a-z 0-9 _ : -, tokens split on '.')"
            )


def is_pattern(s: str) -> bool:
    """Whether ``s`` contains a wildcard token (``*`` or ``>``).

    Args:
        s: a topic name or pattern (not validated).

    Returns:
        True if some token is exactly ``*`` or ``>``.
    """
    return any(token in (ONE_TOKEN, TAIL) for token in s.split(SEPARATOR))


def pattern_matches(pattern: str, topic_name: str) -> bool:
    """Whether ``topic_name`` matches ``pattern``.

    A pattern without wildcards matches only the identical name.

    Args:
        pattern: a valid pattern (see :func:`validate_pattern`).
        topic_name: a topic name; wildcard characters in it are literal.

    Returns:
        True if the name matches.

    Raises:
        InvalidArgument: ``pattern`` is malformed.
    """
    validate_pattern(pattern)
    pattern_tokens = pattern.split(SEPARATOR)
    name_tokens = topic_name.split(SEPARATOR)
    for index, token in enumerate(pattern_tokens):
        if token == TAIL:
            return len(name_tokens) > index and all(name_tokens[index:])
        if index >= len(name_tokens):
            return False
        if token == ONE_TOKEN:
            if not name_tokens[index]:
                return False
        elif token != name_tokens[index]:
            return False
    return len(name_tokens) == len(pattern_tokens)
