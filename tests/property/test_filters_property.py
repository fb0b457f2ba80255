"""Hypothesis: the native FilterSet agrees with reference_match on every subscription."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastfanout._ext.filters import FilterSet
from fastfanout.errors import InvalidFilterPolicy
from fastfanout.semantics.filter_policy import parse_policy, reference_match

KEYS = ["a", "b", "c", "a.b"]
TEXTS = ["x", "y", "xy", "Xy", "yx", "", "10.0.0.1", "10.0.0.5", "2001:db8::1", "é"]
NUMBERS = [0, 1, 1.5, 100, -3, 2, 1e9]
CIDRS = ["10.0.0.0/8", "10.0.0.0/30", "10.0.0.4/31", "2001:db8::/32", "0.0.0.0/0", "::/0"]
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

texts = st.sampled_from(TEXTS)
numbers = st.sampled_from(NUMBERS)


@st.composite
def numeric_specs(draw: st.DrawFn) -> list[Any]:
    if draw(st.booleans()):
        return [draw(st.sampled_from(["=", "<", "<=", ">", ">="])), draw(numbers)]
    low, high = sorted(draw(st.lists(numbers, min_size=2, max_size=2, unique=True)))
    return [draw(st.sampled_from([">", ">="])), low, draw(st.sampled_from(["<", "<="])), high]


def conditions(body: bool) -> st.SearchStrategy[Any]:
    literal = st.sampled_from([True, False, None]) if body else st.nothing()
    return st.one_of(
        texts,
        numbers,
        literal,
        texts.map(lambda t: {"prefix": t}),
        texts.map(lambda t: {"suffix": t}),
        texts.map(lambda t: {"equals-ignore-case": t}),
        st.one_of(texts, numbers, st.lists(texts, min_size=1, max_size=3),
                  st.lists(numbers, min_size=1, max_size=3)).map(lambda v: {"anything-but": v}),
        texts.map(lambda t: {"anything-but": {"prefix": t}}),
        numeric_specs().map(lambda spec: {"numeric": spec}),
        st.booleans().map(lambda b: {"exists": b}),
        st.sampled_from(CIDRS).map(lambda c: {"cidr": c}),
    )


def policies(body: bool) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.lists(conditions(body), min_size=1, max_size=3)

    def objects(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        value = st.one_of(leaf, children) if body else leaf
        return st.dictionaries(st.sampled_from(KEYS), value, min_size=1, max_size=3)

    base = st.dictionaries(st.sampled_from(KEYS), leaf, min_size=1, max_size=2)
    nested = st.recursive(base, objects, max_leaves=4)
    with_or = st.tuples(nested, st.lists(nested, min_size=2, max_size=3)).map(
        lambda pair: {**pair[0], "$or": pair[1]}
    )
    return st.one_of(nested, with_or, st.just({}))


attribute_values = st.one_of(
    texts, numbers, st.lists(st.one_of(texts, numbers), max_size=3),
    st.just(b"x"), st.booleans(),
)
attributes = st.dictionaries(st.sampled_from(KEYS), attribute_values, max_size=4)
json_leaves = st.one_of(texts, numbers, st.sampled_from([True, False, None]))
json_bodies = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), json_bodies, max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
    json_bodies.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([None, b"", b"not json"]),
)


@st.composite
def subscriptions(draw: st.DrawFn) -> list[tuple[dict[str, Any], str]]:
    result = []
    for _ in range(draw(st.integers(1, 6))):
        body = draw(st.booleans())
        policy = draw(policies(body))
        try:
            parse_policy(policy, "body" if body else "attributes")
        except InvalidFilterPolicy:
            assume(False)
        result.append((policy, "body" if body else "attributes"))
    return result


@SETTINGS
@given(subscriptions(), st.lists(st.tuples(attributes, bodies), min_size=1, max_size=8))
def test_native_matches_reference(
    subs: list[tuple[dict[str, Any], str]],
    messages: list[tuple[dict[str, Any], bytes | None]],
) -> None:
    filter_set = FilterSet()
    for sub_id, (policy, scope) in enumerate(subs):
        filter_set.set(sub_id * 3 - 5, parse_policy(policy, scope).plain)
    for attrs, body in messages:
        expected = [
            sub_id * 3 - 5
            for sub_id, (policy, scope) in enumerate(subs)
            if reference_match(policy, scope, attrs, body)
        ]
        assert filter_set.match(attrs, body) == expected


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), policies(False)), max_size=12),
       attributes)
def test_set_and_remove_sequences(
    operations: list[tuple[int, bool, dict[str, Any]]], attrs: dict[str, Any]
) -> None:
    filter_set = FilterSet()
    model: dict[int, dict[str, Any]] = {}
    for sub_id, add, policy in operations:
        if add:
            try:
                compiled = parse_policy(policy)
            except InvalidFilterPolicy:
                continue
            filter_set.set(sub_id, compiled.plain)
            model[sub_id] = policy
        else:
            assert filter_set.remove(sub_id) is (model.pop(sub_id, None) is not None)
        expected = sorted(
            i for i, p in model.items() if reference_match(p, "attributes", attrs, None)
        )
        assert filter_set.match(attrs) == expected
        assert len(filter_set) == len(model)


@st.composite
def changes(draw: st.DrawFn) -> list[tuple[int, tuple[bool, Any] | None]]:
    """Sets (a plain policy) and removes (None) on a few ids, in any order."""
    result: list[tuple[int, tuple[bool, Any] | None]] = []
    for _ in range(draw(st.integers(1, 16))):
        sub_id = draw(st.integers(-3, 5))
        if draw(st.integers(0, 3)) == 0:
            result.append((sub_id, None))
            continue
        body = draw(st.booleans())
        try:
            plain = parse_policy(draw(policies(body)), "body" if body else "attributes").plain
        except InvalidFilterPolicy:
            continue
        result.append((sub_id, plain))
    return result


@SETTINGS
@given(changes(), st.lists(st.tuples(attributes, bodies), min_size=1, max_size=6))
def test_incremental_changes_match_a_set_built_from_scratch(
    operations: list[tuple[int, tuple[bool, Any] | None]],
    messages: list[tuple[dict[str, Any], bytes | None]],
) -> None:
    incremental = FilterSet()
    final: dict[int, Any] = {}
    for step, (sub_id, plain) in enumerate(operations):
        if plain is None:
            incremental.remove(sub_id)
            final.pop(sub_id, None)
        else:
            incremental.set(sub_id, plain)
            final[sub_id] = plain
        if step % 3 == 2:   # a match between changes (the index is in use, then changed)
            incremental.match(*messages[0])
    scratch = FilterSet()
    for sub_id in sorted(final, reverse=True):   # another order: the result is the same
        scratch.set(sub_id, final[sub_id])
    assert len(incremental) == len(scratch) == len(final)
    for attrs, body in messages:
        assert incremental.match(attrs, body) == scratch.match(attrs, body)
