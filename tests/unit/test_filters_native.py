"""Semantics of every operator, checked on the native FilterSet and the reference matcher.

Each case states the expected outcome by hand, so a shared misunderstanding of the two
matchers still fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastfanout._ext import filters
from fastfanout._ext.filters import FilterSet
from fastfanout.errors import InvalidArgument
from fastfanout.semantics import filter_policy
from fastfanout.semantics.filter_policy import parse_policy, reference_match

A = "attributes"
B = "body"

# (policy, scope, attributes, body, expected)
CASES: list[tuple[dict[str, Any], str, dict[str, Any] | None, bytes | None, bool]] = [
    # exact strings, OR within a key, AND across keys
    ({"e": ["a", "b"]}, A, {"e": "b"}, None, True),
    ({"e": ["a", "b"]}, A, {"e": "c"}, None, False),
    ({"e": ["a"]}, A, {}, None, False),
    ({"e": ["a"], "f": ["x"]}, A, {"e": "a", "f": "x"}, None, True),
    ({"e": ["a"], "f": ["x"]}, A, {"e": "a", "f": "y"}, None, False),
    ({"e": ["a"], "f": ["x"]}, A, {"e": "a"}, None, False),
    ({"e": ["a"]}, A, {"e": "A"}, None, False),
    # exact numbers: numeric comparison, strict typing
    ({"n": [100]}, A, {"n": 100}, None, True),
    ({"n": [100]}, A, {"n": 100.0}, None, True),
    ({"n": [100]}, A, {"n": "100"}, None, False),
    ({"n": ["100"]}, A, {"n": 100}, None, False),
    ({"n": [1.5]}, A, {"n": 1.5}, None, True),
    ({"n": [1]}, A, {"n": True}, None, False),
    # String.Array: any element
    ({"e": ["a"]}, A, {"e": ["z", "a"]}, None, True),
    ({"e": ["a"]}, A, {"e": ["z", "y"]}, None, False),
    ({"e": ["a"]}, A, {"e": []}, None, False),
    # Binary never matches a value
    ({"e": ["a"]}, A, {"e": b"a"}, None, False),
    ({"e": [{"anything-but": "x"}]}, A, {"e": b"a"}, None, False),
    ({"e": [{"exists": True}]}, A, {"e": b"a"}, None, True),
    # prefix / suffix
    ({"e": [{"prefix": "ord"}]}, A, {"e": "order"}, None, True),
    ({"e": [{"prefix": "ord"}]}, A, {"e": "or"}, None, False),
    ({"e": [{"prefix": "ord"}]}, A, {"e": 5}, None, False),
    ({"e": [{"suffix": "ed"}]}, A, {"e": "placed"}, None, True),
    ({"e": [{"suffix": "ed"}]}, A, {"e": "place"}, None, False),
    ({"e": [{"prefix": "é"}]}, A, {"e": "éte"}, None, True),
    ({"e": [{"suffix": "x"}]}, A, {"e": "a\ud800x"}, None, True),
    # equals-ignore-case
    ({"e": [{"equals-ignore-case": "OrDer"}]}, A, {"e": "ORDER"}, None, True),
    ({"e": [{"equals-ignore-case": "order"}]}, A, {"e": "orders"}, None, False),
    # anything-but
    ({"e": [{"anything-but": "a"}]}, A, {"e": "b"}, None, True),
    ({"e": [{"anything-but": "a"}]}, A, {"e": "a"}, None, False),
    ({"e": [{"anything-but": "a"}]}, A, {}, None, False),
    ({"e": [{"anything-but": ["a", "b"]}]}, A, {"e": "b"}, None, False),
    ({"e": [{"anything-but": ["a", "b"]}]}, A, {"e": ["a", "c"]}, None, True),
    ({"e": [{"anything-but": ["a", "b"]}]}, A, {"e": ["a", "b"]}, None, False),
    ({"e": [{"anything-but": [1, 2]}]}, A, {"e": 2.0}, None, False),
    ({"e": [{"anything-but": [1, 2]}]}, A, {"e": 3}, None, True),
    ({"e": [{"anything-but": [1, 2]}]}, A, {"e": "1"}, None, True),
    ({"e": [{"anything-but": {"prefix": "ord"}}]}, A, {"e": "order"}, None, False),
    ({"e": [{"anything-but": {"prefix": "ord"}}]}, A, {"e": "refund"}, None, True),
    ({"e": [{"anything-but": {"prefix": "ord"}}]}, A, {"e": 5}, None, False),
    ({"e": [{"anything-but": "a"}, {"anything-but": "b"}]}, A, {"e": "a"}, None, True),
    ({"e": [{"anything-but": "a"}, {"exists": False}]}, A, {}, None, True),
    # numeric
    ({"p": [{"numeric": ["=", 5]}]}, A, {"p": 5}, None, True),
    ({"p": [{"numeric": ["=", 5]}]}, A, {"p": "5"}, None, False),
    ({"p": [{"numeric": [">", 0, "<=", 150]}]}, A, {"p": 150}, None, True),
    ({"p": [{"numeric": [">", 0, "<=", 150]}]}, A, {"p": 0}, None, False),
    ({"p": [{"numeric": [">", 0, "<=", 150]}]}, A, {"p": 150.01}, None, False),
    ({"p": [{"numeric": [">=", 0, "<", 1]}]}, A, {"p": 0}, None, True),
    ({"p": [{"numeric": [">=", 0, "<", 1]}]}, A, {"p": 1}, None, False),
    ({"p": [{"numeric": ["<", 0]}]}, A, {"p": -(10**400)}, None, True),
    ({"p": [{"numeric": [">", 0]}]}, A, {"p": [1, "x"]}, None, True),
    # exists
    ({"e": [{"exists": True}]}, A, {"e": "x"}, None, True),
    ({"e": [{"exists": True}]}, A, {}, None, False),
    ({"e": [{"exists": False}]}, A, {}, None, True),
    ({"e": [{"exists": False}]}, A, {"e": "x"}, None, False),
    ({"e": [{"exists": False}, "x"]}, A, {"e": "x"}, None, True),
    ({"e": [{"exists": False}, "x"]}, A, {"e": "y"}, None, False),
    # cidr
    ({"ip": [{"cidr": "10.0.0.0/24"}]}, A, {"ip": "10.0.0.255"}, None, True),
    ({"ip": [{"cidr": "10.0.0.0/24"}]}, A, {"ip": "10.0.1.0"}, None, False),
    ({"ip": [{"cidr": "10.0.0.0/20"}]}, A, {"ip": "10.0.15.1"}, None, True),
    ({"ip": [{"cidr": "10.0.0.0/20"}]}, A, {"ip": "10.0.16.1"}, None, False),
    ({"ip": [{"cidr": "10.0.0.0/24"}]}, A, {"ip": "not an ip"}, None, False),
    ({"ip": [{"cidr": "10.0.0.0/24"}]}, A, {"ip": "::ffff:10.0.0.1"}, None, False),
    ({"ip": [{"cidr": "2001:db8::/32"}]}, A, {"ip": "2001:db8:1::5"}, None, True),
    ({"ip": [{"cidr": "2001:db8::/32"}]}, A, {"ip": "2001:db9::5"}, None, False),
    ({"ip": [{"cidr": "0.0.0.0/0"}]}, A, {"ip": "1.2.3.4"}, None, True),
    ({"ip": [{"cidr": "0.0.0.0/0"}]}, A, {"ip": "1.2.3.4\x00"}, None, False),
    # attribute scope: a dotted key is just a name
    ({"a.b": ["x"]}, A, {"a.b": "x"}, None, True),
    ({"a.b": ["x"]}, A, {"a": "x"}, None, False),
    # $or
    ({"s": ["x"], "$or": [{"m": ["1"]}, {"n": ["2"]}]}, A, {"s": "x", "n": "2"}, None, True),
    ({"s": ["x"], "$or": [{"m": ["1"]}, {"n": ["2"]}]}, A, {"s": "x"}, None, False),
    ({"s": ["x"], "$or": [{"m": ["1"]}, {"n": ["2"]}]}, A, {"m": "1"}, None, False),
    ({"$or": [{"m": ["1"]}, {"$or": [{"n": ["2"]}, {"o": ["3"]}]}]}, A, {"o": "3"}, None, True),
    ({"$or": [{"m": ["1"]}, {"$or": [{"n": ["2"]}, {"o": ["3"]}]}]}, A, {"o": "4"}, None, False),
    # empty policy: no filter
    ({}, A, {}, None, True),
    ({}, A, None, None, True),
    # body scope: nested keys, dotted keys, arrays
    ({"a": {"b": ["x"]}}, B, None, b'{"a": {"b": "x"}}', True),
    ({"a": {"b": ["x"]}}, B, None, b'{"a": {"b": "y"}}', False),
    ({"a": {"b": ["x"]}}, B, None, b'{"a.b": "x"}', True),
    ({"a.b": ["x"]}, B, None, b'{"a": {"b": "x"}}', True),
    ({"a": {"b": ["x"]}}, B, None, b'{"a": [{"b": "y"}, {"b": "x"}]}', True),
    ({"a": ["x"]}, B, None, b'{"a": ["y", ["x"]]}', True),
    ({"a": ["x"]}, B, None, b'{"a": {"x": 1}}', False),
    ({"a": [{"exists": True}]}, B, None, b'{"a": {"b": 1}}', False),
    ({"a": [{"exists": False}]}, B, None, b'{"a": []}', True),
    ({"a": [{"exists": True}]}, B, None, b'{"a": null}', True),
    ({"a": [None]}, B, None, b'{"a": null}', True),
    ({"a": [True]}, B, None, b'{"a": true}', True),
    ({"a": [True]}, B, None, b'{"a": 1}', False),
    ({"a": [1]}, B, None, b'{"a": true}', False),
    ({"a": [False]}, B, None, b'{"a": 0}', False),
    ({"a": [{"anything-but": "x"}]}, B, None, b'{"a": false}', True),
    ({"a": [{"numeric": [">", 1]}]}, B, None, b'{"a": 2}', True),
    ({"a": [{"numeric": [">", 1]}]}, B, None, b'{"a": "2"}', False),
    ({"a": [{"numeric": [">", 1]}]}, B, None, b'{"a": 100000000000000000000000000000}', True),
    ({"a": [{"exists": False}]}, B, None, b'[1, 2]', False),
    ({"a": [{"exists": False}]}, B, None, b"not json", False),
    ({"a": [{"exists": False}]}, B, None, None, False),
    ({}, B, None, b'"a string"', False),
    ({}, B, None, b"{}", True),
    ({"a": {"$or": [{"b": ["1"]}, {"c": ["2"]}]}}, B, None, b'{"a": {"c": "2"}}', True),
    ({"a": {"$or": [{"b": ["1"]}, {"c": ["2"]}]}}, B, None, b'{"b": "1"}', False),
    ({"": {"b": ["x"]}}, B, None, b'{"": {"b": "x"}}', True),
    # the body is ignored by attribute-scope policies and vice versa
    ({"a": ["x"]}, A, {}, b'{"a": "x"}', False),
    ({"a": ["x"]}, B, {"a": "x"}, b"{}", False),
]


@pytest.mark.parametrize(("policy", "scope", "attributes", "body", "expected"), CASES)
def test_native_and_reference(
    policy: dict[str, Any], scope: str, attributes: dict[str, Any] | None,
    body: bytes | None, expected: bool,
) -> None:
    assert reference_match(policy, scope, attributes, body) is expected
    filter_set = FilterSet()
    filter_set.set(7, parse_policy(policy, scope).plain)
    assert filter_set.match(attributes, body) == ([7] if expected else [])


def test_many_subscriptions_ascending_and_deduplicated() -> None:
    filter_set = FilterSet()
    filter_set.set(30, parse_policy({"e": ["a"]}).plain)
    filter_set.set(-4, parse_policy({"$or": [{"e": ["a"]}, {"f": ["b"]}]}).plain)
    filter_set.set(12, parse_policy({"e": [{"anything-but": "a"}]}).plain)
    filter_set.set(2**62, parse_policy({}).plain)
    filter_set.set(5, parse_policy({"e": ["a"]}, "body").plain)
    assert len(filter_set) == 5
    assert filter_set.match({"e": "a", "f": "b"}) == [-4, 30, 2**62]
    assert filter_set.match({"e": "z"}, b'{"e": "a"}') == [5, 12, 2**62]


def test_set_replaces_and_remove_forgets() -> None:
    filter_set = FilterSet()
    filter_set.set(1, parse_policy({"e": ["a"]}).plain)
    assert filter_set.match({"e": "a"}) == [1]
    filter_set.set(1, parse_policy({"e": ["b"]}).plain)
    assert filter_set.match({"e": "a"}) == []
    assert filter_set.match({"e": "b"}) == [1]
    assert 1 in filter_set
    assert filter_set.remove(1) is True
    assert filter_set.remove(1) is False
    assert 1 not in filter_set
    assert len(filter_set) == 0
    assert filter_set.match({"e": "b"}) == []


def test_set_refuses_bad_arguments() -> None:
    filter_set = FilterSet()
    with pytest.raises(InvalidArgument, match="plain compiled policy"):
        filter_set.set(1, {"e": ["a"]})
    with pytest.raises(InvalidArgument, match="plain compiled policy"):
        filter_set.set(1, parse_policy({"e": ["a"]}))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="64-bit"):
        filter_set.set(2**63, parse_policy({}).plain)
    with pytest.raises(InvalidArgument, match="64-bit"):
        filter_set.set("1", parse_policy({}).plain)


def test_match_accepts_mappings_and_buffers() -> None:
    filter_set = FilterSet()
    filter_set.set(1, parse_policy({"a": ["x"]}, "body").plain)
    filter_set.set(2, parse_policy({"e": ["a"]}).plain)
    assert filter_set.match(None, bytearray(b'{"a": "x"}')) == [1]
    assert filter_set.match(None, memoryview(b'{"a": "x"}')) == [1]
    from types import MappingProxyType

    assert filter_set.match(MappingProxyType({"e": "a"})) == [2]


@pytest.mark.parametrize(("attributes", "body", "fault"), [
    (None, 5, "body must be bytes-like or None, got int"),        # was 5 zero bytes
    (None, '{"a": "x"}', "body must be bytes-like or None, got str"),
    ([("e", "a")], None, "attributes must be a mapping"),          # was taken as a dict
    (5, None, "attributes must be a mapping"),                     # was a TypeError
])
def test_match_refuses_what_is_no_message(attributes: Any, body: Any, fault: str) -> None:
    filter_set = FilterSet()
    filter_set.set(1, parse_policy({"a": [{"exists": False}]}, "body").plain)
    filter_set.set(2, parse_policy({"e": [{"exists": False}]}).plain)
    with pytest.raises(InvalidArgument, match=fault):
        filter_set.match(attributes, body)
    assert filter_set.match(None, b"{}") == [1, 2]
    with pytest.raises(InvalidArgument, match=fault):
        reference_match({"a": [{"exists": False}]}, B, attributes, body)


def test_ignores_unused_attributes_and_unknown_types() -> None:
    filter_set = FilterSet()
    filter_set.set(1, parse_policy({"e": [{"exists": True}]}).plain)
    filter_set.set(2, parse_policy({"e": [{"anything-but": "x"}]}).plain)
    assert filter_set.match({"other": "x", "e": object()}) == [1]
    assert filter_set.match({"e": None}) == [1]
    assert filter_set.match({"e": True}) == [1]


@pytest.mark.parametrize("policy", [
    (False, ((("e", ((99, "a"),)),),)),                       # unknown kind
    (False, ((("e", ((True, "a"),)),),)),                     # a bool is no kind
    (False, ((("e", ((filter_policy.KIND_EXACT, 1),)),),)),   # numbers come as floats
    (False, ((("e", ((filter_policy.KIND_PREFIX, b"a"),)),),)),
    (False, ((("e", ((filter_policy.KIND_NUMERIC, 0.0, True, 1.0),)),),)),
    (False, ((("e", ((filter_policy.KIND_ANYTHING_BUT, ["a"]),)),),)),
    (False, ((("e", ((filter_policy.KIND_EXISTS, 1),)),),)),
    (False, ((("e", ((filter_policy.KIND_CIDR, 4, 33, bytes(4)),)),),)),
    (False, ((("e", ((filter_policy.KIND_CIDR, 6, 8, bytes(4)),)),),)),
    (False, ((("e", ()),),)),                                 # a clause needs a condition
    (False, (((1, ((filter_policy.KIND_EXACT, "a"),)),),)),   # paths are str
    (False, [(("e", ((filter_policy.KIND_EXACT, "a"),)),)]),  # tuples, not lists
    ("body", ()),
    (False,),
])
def test_set_refuses_a_malformed_plain_policy_and_changes_nothing(policy: Any) -> None:
    filter_set = FilterSet()
    filter_set.set(1, parse_policy({"e": ["a"]}).plain)
    with pytest.raises(InvalidArgument):
        filter_set.set(1, policy)
    with pytest.raises(InvalidArgument):
        filter_set.set(2, policy)
    assert len(filter_set) == 1 and 2 not in filter_set
    assert filter_set.match({"e": "a"}) == [1]


def test_the_plain_form_is_plain_data_with_the_kinds_the_matcher_reads() -> None:
    assert filters.CONDITION_KINDS == filter_policy.CONDITION_KINDS
    compiled = parse_policy({"e": ["a", 1, {"numeric": [">", 0, "<=", 5]},
                                   {"cidr": "10.0.0.0/8"}, {"exists": False}]})
    assert compiled.plain == (False, ((("e", (
        (filter_policy.KIND_EXACT, "a"),
        (filter_policy.KIND_EXACT, 1.0),
        (filter_policy.KIND_NUMERIC, 0.0, False, 5.0, True),
        (filter_policy.KIND_CIDR, 4, 8, bytes([10, 0, 0, 0])),
        (filter_policy.KIND_EXISTS, False),
    )),),))


def test_the_native_matcher_holds_no_policy_class() -> None:
    """The matcher reads plain data: no class of the Python compiler is in its namespace."""
    assert not [name for name, value in vars(filters).items()
                if getattr(value, "__module__", None) == filter_policy.__name__]


def _nested(depth: int) -> bytes:
    """A JSON object with ``"a": 1`` whose ``"z"`` nests arrays to ``depth`` levels in all."""
    return b'{"a": 1, "z": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_the_body_depth_limit_is_the_same_in_both_matchers() -> None:
    assert filters.MAX_BODY_DEPTH == filter_policy.MAX_BODY_DEPTH


@pytest.mark.parametrize(("depth", "expected"), [
    (filter_policy.MAX_BODY_DEPTH, True),
    (filter_policy.MAX_BODY_DEPTH + 1, False),
    (100_000, False),                       # beyond the decoder's recursion: no error
])
def test_a_body_nested_beyond_the_limit_matches_no_body_policy(depth: int,
                                                                expected: bool) -> None:
    policy = {"a": [{"exists": True}]}
    filter_set = FilterSet()
    filter_set.set(1, parse_policy(policy, B).plain)
    body = _nested(depth)
    assert filter_set.match({}, body) == ([1] if expected else [])
    assert reference_match(policy, B, {}, body) is expected


def test_brackets_inside_body_strings_do_not_count_as_nesting() -> None:
    policy = {"a": ["[" * 300 + '\\"{']}
    filter_set = FilterSet()
    filter_set.set(1, parse_policy(policy, B).plain)
    body = b'{"a": "' + b"[" * 300 + b'\\\\\\"{"}'
    assert filter_set.match({}, body) == [1]
    assert reference_match(policy, B, {}, body) is True


def test_replaced_and_removed_policies_are_compacted_away() -> None:
    filter_set = FilterSet()
    keep = parse_policy({"k": ["keep"]}).plain
    for sub_id in range(10):
        filter_set.set(sub_id, keep)
    live, dead = filter_set.index_size()
    assert dead == 0
    # Replacing one policy again and again leaves dead weight behind, up to a bound.
    for n in range(2000):
        filter_set.set(3, parse_policy({"k": [f"v{n}", "x"]}).plain)
        filter_set.match({"k": "keep"})
        assert filter_set.index_size()[1] <= live + 2048
    assert filter_set.match({"k": "keep"}) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert filter_set.match({"k": "x"}) == [3]
    for sub_id in range(10):
        assert filter_set.remove(sub_id)
    filter_set.match({})
    assert filter_set.match({"k": "keep"}) == []
    assert filter_set.remove(3) is False


def test_a_policy_replaced_out_of_id_order_still_gives_ascending_ids() -> None:
    filter_set = FilterSet()
    every = parse_policy({"k": [{"exists": True}]}).plain
    for sub_id in (10, 20, 30):
        filter_set.set(sub_id, every)
    filter_set.set(10, parse_policy({"k": ["a", "b"]}).plain)    # now indexed after 30
    filter_set.set(5, every)
    assert filter_set.match({"k": "a"}) == [5, 10, 20, 30]
    assert filter_set.match({"k": "c"}) == [5, 20, 30]
