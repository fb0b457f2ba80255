"""parse_policy: validation errors (each names its fault and path), limits, compiled form."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from typing import Any

import pytest

from fastfanout import Broker
from fastfanout.errors import InvalidArgument, InvalidFilterPolicy
from fastfanout.semantics.filter_policy import (
    MAX_ATTRIBUTE_NAME,
    MAX_POLICY_BYTES,
    AnythingBut,
    AnythingButPrefix,
    Cidr,
    Clause,
    EqualsIgnoreCase,
    Exact,
    Exists,
    Numeric,
    Prefix,
    Suffix,
    parse_policy,
    reference_match,
)

INVALID: list[tuple[Any, str, str]] = [
    # (policy, scope, message fragment)
    ([], "attributes", "must be a JSON object"),
    ("[1]", "attributes", "must be a JSON object"),
    ("{not json", "attributes", "not valid JSON"),
    ({"e": "a"}, "attributes", "at e: expected an array"),
    ({"e": 5}, "attributes", "at e: expected an array"),
    ({"e": []}, "attributes", "at e: empty array"),
    ({"e": [["a"]]}, "attributes", "must be a string, number, boolean, null or operator"),
    ({"e": [{"regex": "a"}]}, "attributes", "unknown operator 'regex'"),
    ({"e": [{"prefix": "a", "suffix": "b"}]}, "attributes", "exactly one operator"),
    ({"e": [{}]}, "attributes", "exactly one operator"),
    ({"e": [{"prefix": 5}]}, "attributes", '"prefix" needs a string'),
    ({"e": [{"suffix": None}]}, "attributes", '"suffix" needs a string'),
    ({"e": [{"equals-ignore-case": ["a"]}]}, "attributes", '"equals-ignore-case" needs a string'),
    ({"e": [{"anything-but": []}]}, "attributes", '"anything-but" list is empty'),
    ({"e": [{"anything-but": ["a", 1]}]}, "attributes", "only one of them"),
    ({"e": [{"anything-but": [None]}]}, "attributes", "only one of them"),
    ({"e": [{"anything-but": {"wildcard": "a*"}}]}, "attributes",
     "unsupported \"anything-but\" pattern 'wildcard'"),
    ({"e": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}, "attributes",
     'exactly one "prefix"'),
    # AWS: "Unsupported anything-but pattern: suffix"
    ({"e": [{"anything-but": {"suffix": "b"}}]}, "attributes",
     "unsupported \"anything-but\" pattern 'suffix'"),
    # AWS: "Too many elements in numeric expression"
    ({"e": [{"numeric": ["<", 100, ">", 10]}]}, "attributes",
     'a "numeric" range gives its lower bound'),
    ({"e": [{"numeric": ["<=", 100, ">=", 10]}]}, "attributes", "lower bound (>, >=) first"),
    ({"e": [{"anything-but": {"prefix": 1}}]}, "attributes", "needs a string"),
    ({"e": [{"numeric": [">", 5, "<", 5]}]}, "attributes", "bottom 5 must be below top 5"),
    ({"e": [{"numeric": [">", 6, "<=", 5]}]}, "attributes", "must be below top"),
    ({"e": [{"numeric": [">", 1, ">=", 5]}]}, "attributes", "more than one lower bound"),
    ({"e": [{"numeric": ["<", 1, "<=", 5]}]}, "attributes", "lower bound (>, >=) first"),
    ({"e": [{"numeric": ["=", 1, "<", 5]}]}, "attributes", '"=" cannot be combined'),
    ({"e": [{"numeric": [">", 1, "=", 5]}]}, "attributes", '"=" cannot be combined'),
    ({"e": [{"numeric": ["!=", 1]}]}, "attributes", "unknown numeric comparison '!='"),
    ({"e": [{"numeric": [">", "1"]}]}, "attributes", "expected a number"),
    ({"e": [{"numeric": [">", True]}]}, "attributes", "expected a number"),
    ({"e": [{"numeric": [">"]}]}, "attributes", '"numeric" needs [op, number]'),
    ({"e": [{"numeric": 5}]}, "attributes", '"numeric" needs [op, number]'),
    ({"e": [{"numeric": [">", 0, "<"]}]}, "attributes", '"numeric" needs [op, number]'),
    ({"e": [{"numeric": [">", 2e9]}]}, "attributes", "outside -1e9..1e9"),
    ({"e": [2e9]}, "attributes", "outside -1e9..1e9"),
    ({"e": [math.inf]}, "attributes", "outside -1e9..1e9"),
    ({"e": [{"anything-but": [-2e9]}]}, "attributes", "outside -1e9..1e9"),
    ({"e": [{"exists": "true"}]}, "attributes", '"exists" needs true or false'),
    ({"e": [{"exists": 1}]}, "attributes", '"exists" needs true or false'),
    ({"e": [{"cidr": "10.0.0.0"}]}, "attributes", "malformed CIDR '10.0.0.0'"),
    ({"e": [{"cidr": "10.0.0.0/33"}]}, "attributes", "malformed CIDR"),
    ({"e": [{"cidr": "10.0.0.256/8"}]}, "attributes", "malformed CIDR"),
    ({"e": [{"cidr": "2001:db8::/129"}]}, "attributes", "malformed CIDR"),
    ({"e": [{"cidr": 10}]}, "attributes", '"cidr" needs a string'),
    ({"a": {"b": ["x"]}}, "attributes", 'at a: nested policy objects need scope "body"'),
    ({"a": {}}, "body", "at a: empty nested object"),
    ({"a": {"b": []}}, "body", "at a.b: empty array"),
    ({"a": {"b": [{"nope": 1}]}}, "body", "at a.b: unknown operator"),
    ({"$or": [{"a": ["x"]}]}, "attributes", '"$or" needs an array of at least two'),
    ({"$or": {"a": ["x"]}}, "attributes", '"$or" needs an array of at least two'),
    ({"$or": [{"a": ["x"]}, "b"]}, "attributes", "at $or[1]: a $or alternative must be"),
    ({"$or": [{"a": ["x"]}, {}]}, "attributes", "at $or[1]: a $or alternative must be"),
    ({"$or": [{"numeric": 1}, {"prefix": "a"}]}, "attributes", "cannot use operator keys"),
    ({"k1": ["a"], "k2": ["a"], "k3": ["a"], "k4": ["a"], "k5": ["a"], "k6": ["a"]},
     "attributes", "6 keys in one branch; the limit is 5"),
    ({"a": {"b": ["x"], "c": ["x"], "d": ["x"]}, "e": {"f": ["x"], "g": ["x"], "h": ["x"]}},
     "body", "6 keys in one branch"),
    ({"k1": list("abcdef"), "k2": list("abcdef"), "k3": list("abcde")},
     "attributes", "180 value combinations; the limit is 150"),
    ({"$or": [{"a": list("abcdefghij") * 8}, {"b": list("abcdefghij") * 8}]},
     "attributes", "160 value combinations"),
    ({"$or": [{"a": ["x"], "$or": [{"b": ["x"]}, {"c": ["x"]}]}, {"d": ["x"]}],
      "e": list("x" * 60)}, "attributes", "180 value combinations"),
]


@pytest.mark.parametrize(("policy", "scope", "fragment"), INVALID)
def test_invalid_policies_name_the_fault(policy: Any, scope: str, fragment: str) -> None:
    with pytest.raises(InvalidFilterPolicy) as caught:
        parse_policy(policy, scope)
    assert fragment in str(caught.value)
    assert caught.value.code == "invalid_filter_policy"
    assert isinstance(caught.value, InvalidArgument)


def test_bad_scope_is_an_invalid_argument_not_a_policy_error() -> None:
    with pytest.raises(InvalidArgument, match="scope must be one of") as caught:
        parse_policy({}, "MessageBody")
    assert not isinstance(caught.value, InvalidFilterPolicy)


def test_size_limit_applies_to_text_and_dicts() -> None:
    big = {"e": ["x" * (MAX_POLICY_BYTES)]}
    with pytest.raises(InvalidFilterPolicy, match="over the 262144-byte limit"):
        parse_policy(big)
    with pytest.raises(InvalidFilterPolicy, match="over the 262144-byte limit"):
        parse_policy(json.dumps(big))
    fits = {"e": ["x" * (MAX_POLICY_BYTES - 100)]}
    assert parse_policy(fits).key_count == 1


def test_not_json_compatible_dict() -> None:
    with pytest.raises(InvalidFilterPolicy, match="not JSON-compatible"):
        parse_policy({"e": [object()]})


def test_limits_at_the_boundary_are_accepted() -> None:
    five = {f"k{i}": ["a"] for i in range(5)}
    assert parse_policy(five).key_count == 5
    combos = {"k1": list("abcde"), "k2": list("abcde"), "k3": list("abcdef")}
    assert parse_policy(combos).combinations == 150
    # $or: keys are counted per expanded branch, combinations summed over branches
    wide = {"s": ["x"], "$or": [{f"a{i}": ["1"], f"b{i}": ["2"]} for i in range(6)]}
    compiled = parse_policy(wide)
    assert compiled.key_count == 3
    assert compiled.combinations == 6
    assert len(compiled.branches) == 6


def test_sns_or_example_complexity() -> None:
    policy = {
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {"metricType": ["MetricType"],
             "$or": [{"metricId": [1234, 4321]}, {"spaceId": [1000, 2000, 3000]}]},
        ],
    }
    compiled = parse_policy(policy)
    assert compiled.combinations == 2 + 2 + 3
    assert compiled.key_count == 3
    assert [[c.path for c in branch] for branch in compiled.branches] == [
        ["source", "metricName"],
        ["source", "metricType", "metricId"],
        ["source", "metricType", "spaceId"],
    ]


def test_compiled_conditions() -> None:
    compiled = parse_policy({
        "e": ["a", 5, True, None, {"prefix": "p"}, {"suffix": "s"},
              {"equals-ignore-case": "MiXed"}, {"anything-but": "x"},
              {"anything-but": [1, 2]}, {"anything-but": {"prefix": "q"}},
              {"exists": False}],
        "n": [{"numeric": [">", 0, "<=", 150]}, {"numeric": ["=", 3]},
              {"numeric": ["<", 7]}, {"cidr": "10.0.0.9/24"}],
    })
    (branch,) = compiled.branches
    assert branch[0] == Clause("e", (
        Exact("a"), Exact(5.0), Exact(True), Exact(None), Prefix("p"), Suffix("s"),
        EqualsIgnoreCase("mixed"), AnythingBut(("x",)), AnythingBut((1.0, 2.0)),
        AnythingButPrefix("q"), Exists(False),
    ))
    assert branch[1] == Clause("n", (
        Numeric(0.0, False, 150.0, True), Numeric(3.0, True, 3.0, True),
        Numeric(-math.inf, True, 7.0, False),
        Cidr(ipaddress.ip_network("10.0.0.0/24")),
    ))
    assert isinstance(compiled.branches[0][0].conditions[1].value, float)  # type: ignore[union-attr]


def test_text_and_bytes_policies_and_scope_recorded() -> None:
    compiled = parse_policy('{"a": {"b": ["x"]}}', "body")
    assert compiled.scope == "body"
    assert compiled.policy == {"a": {"b": ["x"]}}
    assert compiled.branches[0][0].path == "a.b"
    assert parse_policy(b'{"e": ["x"]}').branches[0][0].path == "e"


def test_empty_policy_has_one_empty_branch() -> None:
    compiled = parse_policy({})
    assert compiled.branches == ((),)
    assert compiled.key_count == 0


def test_reference_match_validates_first() -> None:
    with pytest.raises(InvalidFilterPolicy):
        reference_match({"e": []}, "attributes", {"e": "a"}, None)
    with pytest.raises(InvalidArgument):
        reference_match({}, "MessageAttributes", {}, None)


@pytest.mark.parametrize(("policy", "fragment"), [
    ({"price": [{"numeric": ["<", 100, ">", 10]}]}, "lower bound (>, >=) first"),
    ({"name": [{"anything-but": {"suffix": ".tmp"}}]}, "unsupported \"anything-but\""),
])
def test_subscribe_refuses_what_aws_refuses(policy: dict[str, Any], fragment: str) -> None:
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        with pytest.raises(InvalidFilterPolicy, match=re.escape(fragment)):
            broker.subscribe("t", "q", filter_policy=policy)
        assert broker.list_subscriptions() == {}


@pytest.mark.parametrize("depth", [65, 5000])
def test_a_policy_nested_too_deep_is_refused_as_such(depth: int) -> None:
    # 5000 levels: json raised RecursionError (from a dict's size check, and from text)
    policy: Any = {"a": ["x"]}
    for _ in range(depth):
        policy = {"a": policy}
    for form in (policy, '{"a": ' * depth + '{"a": ["x"]}' + "}" * depth):
        with pytest.raises(InvalidFilterPolicy, match="nests deeper than 64 levels"):
            parse_policy(form, "body")
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        with pytest.raises(InvalidFilterPolicy, match="nests deeper than 64 levels"):
            broker.subscribe("t", "q", filter_policy=policy, filter_scope="body")
        assert broker.list_subscriptions() == {}


@pytest.mark.parametrize("policy", [
    {"a": [10**400]},
    {"a": [{"anything-but": [10**400]}]},
    {"a": [{"anything-but": -(10**400)}]},
    {"a": [{"numeric": ["=", 10**400]}]},
    {"a": [{"numeric": [">", 0, "<", 10**1000]}]},
])
def test_a_huge_integer_in_a_policy_is_refused_and_changes_nothing(policy: Any) -> None:
    # It raised OverflowError (float() of it), untyped, out of subscribe.
    with pytest.raises(InvalidFilterPolicy, match=r"outside -1e9\.\.1e9"):
        parse_policy(policy, "attributes")
    broker = Broker()
    broker.create_topic("t")
    broker.create_queue("q")
    with pytest.raises(InvalidFilterPolicy, match="bits is outside"):
        broker.subscribe("t", "q", filter_policy=policy)
    assert broker.list_subscriptions() == {}


@pytest.mark.parametrize(("text", "key"), [
    ('{"store": ["eu"], "store": ["us"]}', "store"),
    ('{"$or": [{"a": ["x"]}, {"b": ["y"], "b": ["z"]}]}', "b"),
    ('{"a": {"b": [1], "b": [2]}}', "b"),
])
def test_a_key_twice_in_one_object_is_refused(text: str, key: str) -> None:
    # json keeps the last of two equal keys: {"store": ["us"]} would have been the
    # policy, the writer's "eu" dropped unseen.
    scope = "body" if text.startswith('{"a": {') else "attributes"
    for form in (text, text.encode()):
        with pytest.raises(InvalidFilterPolicy, match=f"key '{key}' appears twice"):
            parse_policy(form, scope)
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        with pytest.raises(InvalidFilterPolicy, match="appears twice"):
            broker.subscribe("t", "q", filter_policy=text, filter_scope=scope)
        assert broker.list_subscriptions() == {}
    # the same keys in different objects are not duplicates
    assert parse_policy('{"$or": [{"a": ["x"]}, {"a": ["y"]}]}').key_count == 1


@pytest.mark.parametrize("name", ["", "n" * (MAX_ATTRIBUTE_NAME + 1)])
def test_an_attribute_name_no_message_can_carry_is_refused(name: str) -> None:
    # A publish refuses such an attribute name, so the clause could never be met (or,
    # with "exists": false, always would be).
    for policy in ({name: ["x"]}, {name: [{"exists": False}]},
                   {"$or": [{"a": ["x"]}, {name: ["y"]}]}):
        with pytest.raises(InvalidFilterPolicy, match=f"1 to {MAX_ATTRIBUTE_NAME} characters"):
            parse_policy(policy)
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        with pytest.raises(InvalidFilterPolicy, match="no message carries it"):
            broker.subscribe("t", "q", filter_policy={name: ["x"]})
        assert broker.list_subscriptions() == {}
        with pytest.raises(InvalidArgument, match=f"1 to {MAX_ATTRIBUTE_NAME} char"):
            broker.publish("t", b"m", attributes={name: "x"})
    # the longest name a message can carry is taken, and matches
    longest = "n" * MAX_ATTRIBUTE_NAME
    assert parse_policy({longest: ["x"]}).key_count == 1
    assert reference_match({longest: ["x"]}, "attributes", {longest: "x"}, None)
