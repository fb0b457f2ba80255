"""SNS subscription filter policies: validation, compilation and the reference matcher.

Design
------
A filter policy is the Amazon SNS filter-policy JSON language, checked once at subscribe
time and compiled into a flat, typed form that the native matcher
(:mod:`fastfanout._ext.filters`) indexes. Prior art: Amazon SNS and EventBridge (whose
open-source matcher, event-ruler, flattens both rules and events into dotted field
paths), and content-based routing in Siena and Gryphon, which evaluate each distinct
predicate once per message and then combine the results per subscription.

The compiled form is a disjunction of conjunctions (`CompiledPolicy.branches`): each
``$or`` is expanded, so a branch is a plain AND of *clauses*, and a clause is one field
path with an OR of *conditions* on that field. That is the shape the native matcher
wants (one truth bit per clause, one AND per branch) and also the shape in which SNS
counts its limits: keys per expanded branch, value combinations summed over branches.

The native matcher does not read these classes: it reads `CompiledPolicy.plain`, the
same structure as nested tuples of ``str``, ``float``, ``int``, ``bool``, ``bytes`` and
``None`` (`PlainPolicy`), each condition a tuple led by its kind (``KIND_*``). So the
native boundary is data, not Python types: the matcher imports nothing from here, and
``ext/filters.pxd`` mirrors the kind numbers (a unit test checks that they agree).

Invariants:

* Every policy that :func:`parse_policy` returns is within the SNS limits; every fault is
  an :class:`~fastfanout.errors.InvalidFilterPolicy` whose message names the JSON path.
* Values are typed strictly: the string ``"100"`` never equals the number ``100``.
  Numbers compare as IEEE doubles.
* :func:`reference_match` interprets the *raw* policy dict with none of the compiled
  structures, so that it can serve as an independent oracle for the native matcher.

Field model (shared by both matchers): a message is reduced to ``path -> values``. In
attribute scope the path is the attribute name (dots are just characters) and the values
are the attribute value, or each element of a ``list`` (String.Array). In body scope the
JSON body is flattened: nested objects join their keys with ``.``, arrays contribute each
element to the same path. A path is *present* when it has at least one value (attribute
scope: when the attribute exists at all, whatever its type).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from fastfanout.errors import InvalidArgument, InvalidFilterPolicy

__all__ = [
    "CONDITION_KINDS",
    "KIND_ANYTHING_BUT",
    "KIND_ANYTHING_BUT_PREFIX",
    "KIND_CIDR",
    "KIND_EQUALS_IGNORE_CASE",
    "KIND_EXACT",
    "KIND_EXISTS",
    "KIND_NUMERIC",
    "KIND_PREFIX",
    "KIND_SUFFIX",
    "MAX_ATTRIBUTE_NAME",
    "MAX_BODY_DEPTH",
    "MAX_COMBINATIONS",
    "MAX_DEPTH",
    "MAX_KEYS",
    "MAX_NUMBER",
    "MAX_POLICY_BYTES",
    "SCOPES",
    "AnythingBut",
    "AnythingButPrefix",
    "Cidr",
    "Clause",
    "CompiledPolicy",
    "Condition",
    "EqualsIgnoreCase",
    "Exact",
    "Exists",
    "Numeric",
    "PlainClause",
    "PlainCondition",
    "PlainPolicy",
    "Prefix",
    "Suffix",
    "flatten_body",
    "nested_deeper_than",
    "parse_policy",
    "reference_match",
]

MAX_ATTRIBUTE_NAME: Final = 256
"""Longest message attribute name, in characters (SNS; a publish checks the same): in
attribute scope a policy key must be a name a message can carry, 1 to this long."""
MAX_KEYS: Final = 5
"""Most leaf keys in one expanded ``$or`` branch of a policy (SNS limit)."""
MAX_COMBINATIONS: Final = 150
"""Most value combinations, summed over the expanded ``$or`` branches (SNS limit)."""
MAX_POLICY_BYTES: Final = 256 * 1024
"""Largest policy, in bytes of UTF-8 JSON text (SNS limit: 256 KB)."""
MAX_NUMBER: Final = 1e9
"""Largest magnitude of a number in a policy (SNS: -10^9 to 10^9)."""
MAX_BODY_DEPTH: Final = 128
"""Deepest nesting of arrays and objects in a body that body-scope policies read; a
deeper body matches none, as a body that is not JSON (``ext/filters.pxd`` mirrors it)."""
MAX_DEPTH: Final = 64
"""Deepest nesting of a policy's objects and arrays."""
SCOPES: Final = ("attributes", "body")
"""The filter policy scopes: SNS ``MessageAttributes`` and ``MessageBody``."""

_OPERATORS: Final = frozenset(
    {"prefix", "suffix", "anything-but", "equals-ignore-case", "numeric", "exists", "cidr"}
)
# Also for a policy too deep to decode or encode at all (json recurses per level and
# raises RecursionError, which would otherwise reach the caller, or a server's client as
# an internal error).
_TOO_DEEP: Final = f"policy nests deeper than {MAX_DEPTH} levels"
_LOWER_BOUNDS: Final = frozenset({">", ">="})
_UPPER_BOUNDS: Final = frozenset({"<", "<="})


# --------------------------------------------------------------------------- plain form

# The kind that leads each plain condition tuple; ext/filters.pxd mirrors these numbers.
KIND_EXACT: Final = 0
"""``(KIND_EXACT, value)``: ``value`` a ``str``, ``float``, ``bool`` or ``None``."""
KIND_PREFIX: Final = 1
"""``(KIND_PREFIX, text)``: a string value starting with ``text``."""
KIND_SUFFIX: Final = 2
"""``(KIND_SUFFIX, text)``: a string value ending with ``text``."""
KIND_ANYTHING_BUT_PREFIX: Final = 3
"""``(KIND_ANYTHING_BUT_PREFIX, text)``: a string value not starting with ``text``."""
KIND_EQUALS_IGNORE_CASE: Final = 4
"""``(KIND_EQUALS_IGNORE_CASE, lowered_text)``: a string equal to it once lower-cased."""
KIND_ANYTHING_BUT: Final = 5
"""``(KIND_ANYTHING_BUT, values)``: any value equal to none of the tuple ``values``."""
KIND_NUMERIC: Final = 6
"""``(KIND_NUMERIC, lower, lower_inclusive, upper, upper_inclusive)``: floats and bools."""
KIND_EXISTS: Final = 7
"""``(KIND_EXISTS, present)``: the field is present (``True``) or absent (``False``)."""
KIND_CIDR: Final = 8
"""``(KIND_CIDR, version, prefix_bits, network)``: ``version`` 4 or 6, ``network`` the
packed network address (4 or 16 bytes, host bits zero)."""

CONDITION_KINDS: Final = {
    "exact": KIND_EXACT,
    "prefix": KIND_PREFIX,
    "suffix": KIND_SUFFIX,
    "anything-but-prefix": KIND_ANYTHING_BUT_PREFIX,
    "equals-ignore-case": KIND_EQUALS_IGNORE_CASE,
    "anything-but": KIND_ANYTHING_BUT,
    "numeric": KIND_NUMERIC,
    "exists": KIND_EXISTS,
    "cidr": KIND_CIDR,
}
"""Every condition kind of the plain form by name (the native matcher has the same)."""

PlainCondition = tuple[Any, ...]
"""One condition of the plain form: a ``KIND_*`` followed by its operands."""
PlainClause = tuple[str, tuple[PlainCondition, ...]]
"""One clause of the plain form: ``(path, conditions)``."""
PlainPolicy = tuple[bool, tuple[tuple[PlainClause, ...], ...]]
"""A compiled policy as plain data: ``(body_scope, branches)``, each branch a tuple of
clauses; what :class:`fastfanout._ext.filters.FilterSet` reads."""


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class Exact:
    """Equal to one literal: a string, a number (as float), ``True``/``False`` or ``None``.

    Attributes:
        value: the literal; numbers are stored as ``float``.
    """

    value: str | float | bool | None

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_EXACT`)."""
        return (KIND_EXACT, self.value)


@dataclass(frozen=True, slots=True)
class Prefix:
    """A string value that starts with ``text``."""

    text: str

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_PREFIX`)."""
        return (KIND_PREFIX, self.text)


@dataclass(frozen=True, slots=True)
class Suffix:
    """A string value that ends with ``text``."""

    text: str

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_SUFFIX`)."""
        return (KIND_SUFFIX, self.text)


@dataclass(frozen=True, slots=True)
class EqualsIgnoreCase:
    """A string value equal to ``text`` after ``str.lower`` of both sides.

    Attributes:
        text: the expected value, already lower-cased.
    """

    text: str

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (:data:`KIND_EQUALS_IGNORE_CASE`)."""
        return (KIND_EQUALS_IGNORE_CASE, self.text)


@dataclass(frozen=True, slots=True)
class AnythingBut:
    """Any value (string, number, boolean or null) equal to none of ``values``.

    Attributes:
        values: the excluded literals (all strings or all floats).
    """

    values: tuple[str | float, ...]

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_ANYTHING_BUT`)."""
        return (KIND_ANYTHING_BUT, self.values)


@dataclass(frozen=True, slots=True)
class AnythingButPrefix:
    """A string value that does not start with ``text``."""

    text: str

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (:data:`KIND_ANYTHING_BUT_PREFIX`)."""
        return (KIND_ANYTHING_BUT_PREFIX, self.text)


@dataclass(frozen=True, slots=True)
class Numeric:
    """A number inside an interval; an open side is an inclusive ``-inf`` / ``inf``.

    Attributes:
        lower: the lower bound.
        lower_inclusive: whether ``lower`` itself is inside.
        upper: the upper bound.
        upper_inclusive: whether ``upper`` itself is inside.
    """

    lower: float
    lower_inclusive: bool
    upper: float
    upper_inclusive: bool

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_NUMERIC`)."""
        return (KIND_NUMERIC, self.lower, self.lower_inclusive, self.upper,
                self.upper_inclusive)


@dataclass(frozen=True, slots=True)
class Exists:
    """The field is present (``present=True``) or absent (``present=False``)."""

    present: bool

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_EXISTS`)."""
        return (KIND_EXISTS, self.present)


@dataclass(frozen=True, slots=True)
class Cidr:
    """A string value that parses as an IP address inside ``network``.

    Attributes:
        network: the IPv4 or IPv6 network; host bits are masked off.
    """

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def plain(self) -> PlainCondition:
        """The condition as the native matcher reads it (see :data:`KIND_CIDR`)."""
        return (KIND_CIDR, self.network.version, self.network.prefixlen,
                self.network.network_address.packed)


Condition = (
    Exact
    | Prefix
    | Suffix
    | EqualsIgnoreCase
    | AnythingBut
    | AnythingButPrefix
    | Numeric
    | Exists
    | Cidr
)
"""One compiled value condition of a clause."""


@dataclass(frozen=True, slots=True)
class Clause:
    """One field of one branch: satisfied when any of ``conditions`` holds.

    Attributes:
        path: the attribute name (attribute scope) or dotted body path (body scope).
        conditions: the alternatives, in policy order.
    """

    path: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A validated filter policy, expanded to an OR of ANDs.

    Attributes:
        scope: ``"attributes"`` or ``"body"``.
        policy: the policy as a JSON-compatible dict (as given, or decoded from text).
        branches: the expanded ``$or`` alternatives; each is an AND of clauses. A policy
            without keys has one empty branch and matches every message of its scope.
        key_count: the most leaf keys in one branch (limit :data:`MAX_KEYS`).
        combinations: value combinations summed over branches (limit
            :data:`MAX_COMBINATIONS`).
        plain: ``scope`` and ``branches`` as plain data (:data:`PlainPolicy`), what
            :class:`fastfanout._ext.filters.FilterSet` reads.
    """

    scope: str
    policy: dict[str, Any]
    branches: tuple[tuple[Clause, ...], ...]
    key_count: int
    combinations: int
    plain: PlainPolicy


# --------------------------------------------------------------------------- parsing


def _fail(path: str, message: str) -> InvalidFilterPolicy:
    where = path or "<policy>"
    return InvalidFilterPolicy(f"filter policy at {where}: {message}")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A decoded JSON object, refused when a key repeats.

    ``json`` would keep the last value, and a clause the writer meant would be dropped
    unseen.
    """
    decoded = dict(pairs)
    if len(decoded) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _fail("", f"key {key!r} appears twice in one object")
            seen.add(key)
    return decoded


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _policy_number(value: object, where: str) -> float:
    if not _is_number(value):
        raise _fail(where, f"expected a number, got {value!r}")
    if isinstance(value, int) and not -MAX_NUMBER <= value <= MAX_NUMBER:
        # Checked before float(), which raises OverflowError past ~1.8e308 (and a repr
        # of a huge int can fail too).
        raise _fail(where, f"an integer of {value.bit_length()} bits is outside -1e9..1e9 "
                           f"(the SNS range)")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or abs(number) > MAX_NUMBER:
        raise _fail(where, f"number {value!r} is outside -1e9..1e9 (the SNS range)")
    return number


def _policy_text(value: object, where: str, operator: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f'"{operator}" needs a string, got {value!r}')
    return value


def _compile_numeric(spec: object, where: str) -> Numeric:
    if not isinstance(spec, list) or len(spec) not in (2, 4):
        raise _fail(
            where,
            f'"numeric" needs [op, number] or [op, number, op, number], got {spec!r}',
        )
    if len(spec) == 4 and spec[0] in _UPPER_BOUNDS:
        # SNS reads a range only lower bound first ("Too many elements in numeric
        # expression" otherwise): refused here too, so a policy means the same on both
        raise _fail(
            where,
            f'a "numeric" range gives its lower bound (>, >=) first, then its upper '
            f'(<, <=): got {spec!r}',
        )
    if spec[0] == "=":
        if len(spec) != 2:
            raise _fail(where, '"=" cannot be combined with another comparison')
        value = _policy_number(spec[1], where)
        return Numeric(value, True, value, True)
    # An open side is an inclusive infinity, so that a value of -inf/inf (a huge int)
    # still falls inside a one-sided range.
    lower, lower_inclusive = -math.inf, True
    upper, upper_inclusive = math.inf, True
    seen_lower = seen_upper = False
    for index in range(0, len(spec), 2):
        operator = spec[index]
        value = _policy_number(spec[index + 1], where)
        if operator in _LOWER_BOUNDS:
            if seen_lower:
                raise _fail(where, f"more than one lower bound in {spec!r}")
            seen_lower, lower, lower_inclusive = True, value, operator == ">="
        elif operator in _UPPER_BOUNDS:   # the last (or only) comparison: never twice
            seen_upper, upper, upper_inclusive = True, value, operator == "<="
        elif operator == "=":
            raise _fail(where, '"=" cannot be combined with another comparison')
        else:
            raise _fail(
                where, f"unknown numeric comparison {operator!r} (expected =, <, <=, >, >=)"
            )
    if seen_lower and seen_upper and lower >= upper:
        raise _fail(where, f"numeric range bottom {lower:g} must be below top {upper:g}")
    return Numeric(lower, lower_inclusive, upper, upper_inclusive)


def _compile_anything_but(spec: object, where: str) -> Condition:
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise _fail(where, f'"anything-but" object needs exactly one "prefix", got {spec!r}')
        ((operator, text),) = spec.items()
        if operator == "prefix":
            return AnythingButPrefix(_policy_text(text, where, "anything-but/prefix"))
        # SNS refuses {"suffix": ...} here ("Unsupported anything-but pattern: suffix")
        raise _fail(
            where, f'unsupported "anything-but" pattern {operator!r} (only "prefix")'
        )
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        raise _fail(where, '"anything-but" list is empty')
    if all(isinstance(item, str) for item in items):
        return AnythingBut(tuple(str(item) for item in items))
    if all(_is_number(item) for item in items):
        return AnythingBut(tuple(_policy_number(item, where) for item in items))
    raise _fail(
        where, f'"anything-but" needs a string, a number, or a list of only one of them: {spec!r}'
    )


def _compile_operator(item: dict[str, Any], where: str) -> Condition:
    if len(item) != 1:
        raise _fail(where, f"an operator object needs exactly one operator, got {sorted(item)!r}")
    ((operator, spec),) = item.items()
    if operator not in _OPERATORS:
        raise _fail(where, f"unknown operator {operator!r} (expected one of {sorted(_OPERATORS)})")
    if operator == "prefix":
        return Prefix(_policy_text(spec, where, operator))
    if operator == "suffix":
        return Suffix(_policy_text(spec, where, operator))
    if operator == "equals-ignore-case":
        return EqualsIgnoreCase(_policy_text(spec, where, operator).lower())
    if operator == "anything-but":
        return _compile_anything_but(spec, where)
    if operator == "numeric":
        return _compile_numeric(spec, where)
    if operator == "exists":
        if not isinstance(spec, bool):
            raise _fail(where, f'"exists" needs true or false, got {spec!r}')
        return Exists(spec)
    # cidr
    text = _policy_text(spec, where, operator)
    if "/" not in text:
        raise _fail(where, f"malformed CIDR {text!r}: expected address/prefix-length")
    try:
        return Cidr(ipaddress.ip_network(text, strict=False))
    except ValueError as exc:
        raise _fail(where, f"malformed CIDR {text!r}: {exc}") from None


def _compile_conditions(values: object, where: str) -> tuple[Condition, ...]:
    if not isinstance(values, list):
        raise _fail(where, f"expected an array of values or operators, got {values!r}")
    if not values:
        raise _fail(where, "empty array: a key needs at least one value or operator")
    conditions: list[Condition] = []
    for item in values:
        if isinstance(item, str) or item is None or isinstance(item, bool):
            conditions.append(Exact(item))
        elif _is_number(item):
            conditions.append(Exact(_policy_number(item, where)))
        elif isinstance(item, dict):
            conditions.append(_compile_operator(item, where))
        else:
            raise _fail(
                where, f"value {item!r} must be a string, number, boolean, null or operator"
            )
    return tuple(conditions)


_Branches = list[list[Clause]]


def _cross(left: _Branches, right: _Branches, where: str) -> _Branches:
    if len(left) * len(right) > MAX_COMBINATIONS:
        raise _fail(where, f"too many value combinations (limit {MAX_COMBINATIONS})")
    return [a + b for a in left for b in right]


def _expand(node: dict[str, Any], prefix: str, scope: str, depth: int) -> _Branches:
    """Expand one policy object into its OR of ANDs of clauses."""
    if depth > MAX_DEPTH:
        raise _fail(prefix, _TOO_DEEP)
    branches: _Branches = [[]]
    for key, value in node.items():
        if not isinstance(key, str):
            raise _fail(prefix, f"key {key!r} is not a string")
        if key == "$or":
            where = _join(prefix, "$or")
            if not isinstance(value, list) or len(value) < 2:
                raise _fail(where, '"$or" needs an array of at least two policy objects')
            alternatives: _Branches = []
            for index, option in enumerate(value):
                if not isinstance(option, dict) or not option:
                    raise _fail(f"{where}[{index}]", "a $or alternative must be a non-empty object")
                if _OPERATORS.intersection(option):
                    raise _fail(f"{where}[{index}]", "a $or alternative cannot use operator keys")
                alternatives.extend(_expand(option, prefix, scope, depth + 1))
                if len(alternatives) > MAX_COMBINATIONS:
                    raise _fail(where, f"too many value combinations (limit {MAX_COMBINATIONS})")
            branches = _cross(branches, alternatives, where)
            continue
        if scope != "body" and not 1 <= len(key) <= MAX_ATTRIBUTE_NAME:
            raise _fail(prefix, f"attribute name {key[:40]!r} must be 1 to "
                                f"{MAX_ATTRIBUTE_NAME} characters: no message carries it")
        path = _join(prefix, key)
        if isinstance(value, dict):
            if scope != "body":
                raise _fail(path, 'nested policy objects need scope "body"')
            if not value:
                raise _fail(path, "empty nested object")
            branches = _cross(branches, _expand(value, path, scope, depth + 1), path)
        else:
            clause = Clause(path, _compile_conditions(value, path))
            branches = [[*branch, clause] for branch in branches]
    return branches


def parse_policy(
    policy: Mapping[str, Any] | str | bytes, scope: str = "attributes"
) -> CompiledPolicy:
    """Validate a filter policy and compile it (``.plain`` is what ``FilterSet`` reads).

    Args:
        policy: the policy, as a dict or as JSON text (``str`` or UTF-8 ``bytes``).
        scope: ``"attributes"`` (SNS ``MessageAttributes``, the default) or ``"body"``
            (SNS ``MessageBody``: the message body parsed as a JSON object).

    Returns:
        The compiled policy.

    Raises:
        InvalidArgument: ``scope`` is not one of :data:`SCOPES`.
        InvalidFilterPolicy: the policy is malformed or exceeds a limit; the message
            names the fault and its path in the policy.
    """
    if scope not in SCOPES:
        raise InvalidArgument(f"filter policy scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(policy, str | bytes):
        text = policy.encode() if isinstance(policy, str) else policy
        if len(text) > MAX_POLICY_BYTES:
            raise _fail("", f"policy is {len(text)} bytes, over the {MAX_POLICY_BYTES}-byte limit")
        try:
            decoded = json.loads(text, object_pairs_hook=_object_without_duplicates)
        except InvalidFilterPolicy:   # from the hook: a key twice in one object
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail("", f"not valid JSON: {exc}") from None
        except RecursionError:
            raise _fail("", _TOO_DEEP) from None
    else:
        decoded = policy
        try:
            size = len(json.dumps(decoded, ensure_ascii=False).encode())
        except (TypeError, ValueError) as exc:
            raise _fail("", f"not JSON-compatible: {exc}") from None
        except RecursionError:
            raise _fail("", _TOO_DEEP) from None
        if size > MAX_POLICY_BYTES:
            raise _fail("", f"policy is {size} bytes, over the {MAX_POLICY_BYTES}-byte limit")
    if not isinstance(decoded, Mapping):
        raise _fail("", f"a filter policy must be a JSON object, got {type(decoded).__name__}")
    as_dict = dict(decoded)
    branches = _expand(as_dict, "", scope, 0)
    key_count = max(len(branch) for branch in branches)
    if key_count > MAX_KEYS:
        raise _fail("", f"{key_count} keys in one branch; the limit is {MAX_KEYS}")
    combinations = 0
    for branch in branches:
        product = 1
        for clause in branch:
            product *= len(clause.conditions)
        combinations += product
    if combinations > MAX_COMBINATIONS:
        raise _fail("", f"{combinations} value combinations; the limit is {MAX_COMBINATIONS}")
    plain: PlainPolicy = (scope == "body", tuple(
        tuple((clause.path, tuple(condition.plain() for condition in clause.conditions))
              for clause in branch)
        for branch in branches))
    return CompiledPolicy(
        scope, as_dict, tuple(tuple(branch) for branch in branches), key_count, combinations,
        plain,
    )


# --------------------------------------------------------------------------- reference


def _leaves(value: object) -> Iterator[object]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def nested_deeper_than(text: bytes, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` levels deep.

    Brackets inside strings do not count; for text that is not JSON the answer is
    either (the decoder refuses it anyway). The native matcher counts the same way.
    """
    depth = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:          # backslash
                escaped = True
            elif byte == 0x22:          # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):      # { [
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x7D, 0x5D):      # } ]
            depth -= 1
    return False


def flatten_body(body: object) -> dict[str, list[object]] | None:
    """Flatten a decoded JSON body into ``dotted path -> leaf values``.

    Args:
        body: the decoded body.

    Returns:
        The flattened fields, or ``None`` when ``body`` is not a JSON object (then no
        body-scope policy matches).
    """
    if not isinstance(body, dict):
        return None
    fields: dict[str, list[object]] = {}

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, _join(path, key))
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        else:
            fields.setdefault(path, []).append(node)

    walk(body, "")
    return fields


def _as_number(value: object) -> float | None:
    if not _is_number(value):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def _same_literal(value: object, literal: object) -> bool:
    """Strictly typed JSON equality: strings, numbers, booleans and null never mix."""
    if isinstance(literal, bool) or literal is None:
        return value is literal
    if isinstance(literal, str):
        return isinstance(value, str) and value == literal
    number = _as_number(value)
    return number is not None and number == float(literal)  # type: ignore[arg-type]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _operator_matches(operator: str, spec: Any, value: object) -> bool:
    if operator == "prefix":
        return isinstance(value, str) and value.startswith(spec)
    if operator == "suffix":
        return isinstance(value, str) and value.endswith(spec)
    if operator == "equals-ignore-case":
        return isinstance(value, str) and value.lower() == spec.lower()
    if operator == "anything-but":
        if isinstance(spec, dict):
            (text,) = spec.values()   # {"prefix": text}, the only form parse_policy takes
            return isinstance(value, str) and not value.startswith(text)
        excluded = spec if isinstance(spec, list) else [spec]
        return not any(_same_literal(value, literal) for literal in excluded)
    if operator == "numeric":
        number = _as_number(value)
        if number is None:
            return False
        for index in range(0, len(spec), 2):
            comparison, bound = spec[index], float(spec[index + 1])
            ok = {
                "=": number == bound,
                "<": number < bound,
                "<=": number <= bound,
                ">": number > bound,
                ">=": number >= bound,
            }[comparison]
            if not ok:
                return False
        return True
    if operator == "exists":
        return bool(spec)  # only asked about present values
    # cidr
    if not isinstance(value, str):
        return False
    address = _parse_ip(value)
    return address is not None and address in ipaddress.ip_network(spec, strict=False)


def _value_matches(item: object, value: object) -> bool:
    if isinstance(item, dict):
        ((operator, spec),) = item.items()
        return _operator_matches(operator, spec, value)
    return _same_literal(value, item)


def _key_matches(items: list[Any], present: bool, values: list[object]) -> bool:
    if not present:
        return any(isinstance(item, dict) and item.get("exists") is False for item in items)
    for item in items:
        if isinstance(item, dict) and "exists" in item:
            if item["exists"] is True:
                return True
            continue
        if any(_value_matches(item, value) for value in values):
            return True
    return False


def _object_matches(node: dict[str, Any], prefix: str, fields: dict[str, list[object]]) -> bool:
    for key, value in node.items():
        if key == "$or":
            if not any(_object_matches(option, prefix, fields) for option in value):
                return False
        elif isinstance(value, dict):
            if not _object_matches(value, _join(prefix, key), fields):
                return False
        else:
            path = _join(prefix, key)
            present = path in fields
            if not _key_matches(value, present, fields.get(path, [])):
                return False
    return True


def _attribute_fields(attributes: Mapping[str, object]) -> dict[str, list[object]]:
    fields: dict[str, list[object]] = {}
    for name, value in attributes.items():
        if isinstance(value, list):
            fields[name] = [item for item in value if isinstance(item, str) or _is_number(item)]
        elif isinstance(value, str) or _is_number(value):
            fields[name] = [value]
        else:  # Binary and anything else: present, but no value can match it
            fields[name] = []
    return fields


def reference_match(
    policy: Mapping[str, Any] | str,
    scope: str,
    attributes: Mapping[str, object] | None,
    body: bytes | None,
) -> bool:
    """Decide one message against one policy, the plain way: the test oracle.

    It walks the raw policy JSON recursively and shares no code with the compiled form
    or the native matcher. It is slow; production code uses
    :class:`fastfanout._ext.filters.FilterSet`.

    Args:
        policy: a valid policy (dict or JSON text); it is validated first.
        scope: ``"attributes"`` or ``"body"``.
        attributes: the message attributes (``str``, ``int``/``float``, ``bytes`` or
            ``list[str]`` values), or ``None``.
        body: the message body, or ``None``.

    Returns:
        Whether the message matches the policy.

    Raises:
        InvalidFilterPolicy: the policy is invalid.
        InvalidArgument: the scope is unknown, ``attributes`` is not a mapping or None,
            or ``body`` is not bytes-like or None (as ``FilterSet.match``).
    """
    compiled = parse_policy(policy, scope)
    if attributes is not None and not isinstance(attributes, Mapping):
        raise InvalidArgument(f"attributes must be a mapping (a dict) or None, got "
                              f"{type(attributes).__name__}")
    if body is not None and not isinstance(body, bytes):
        try:
            body = memoryview(body).tobytes()
        except TypeError:
            raise InvalidArgument(f"body must be bytes-like or None, got "
                                  f"{type(body).__name__}") from None
    if scope == "attributes":
        return _object_matches(compiled.policy, "", _attribute_fields(attributes or {}))
    if body is None or nested_deeper_than(body, MAX_BODY_DEPTH):
        return False
    try:
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    fields = flatten_body(decoded)
    if fields is None:
        return False
    return _object_matches(compiled.policy, "", fields)
