"""Native matcher for SNS subscription filter policies.

Design
------
`fastfanout.semantics.filter_policy.parse_policy` validates a policy and expands it into an OR of
*branches*, each an AND of *clauses* (one field, an OR of conditions), and hands it over
as plain data (``CompiledPolicy.plain``: nested tuples, each condition led by a kind
number that ``filters.pxd`` mirrors), so this module imports no Python policy class and
dispatches on numbers. A `FilterSet` holds
the compiled policies of many subscriptions and indexes them by field, the way
content-based routers (Siena, Gryphon, EventBridge's event-ruler) do: the cost of a
message grows with the fields it carries and the predicates on those fields, not with a
full evaluation per subscription.

Per message:

1. ``clause_state`` starts as a copy of ``clause_initial``: a clause holds before any
   field is seen only if it accepts an absent field (``{"exists": false}``).
2. For each field the message carries that some policy mentions, the field's `_Field`
   clears its "absent" clauses, sets its ``{"exists": true}`` clauses, then evaluates each
   value once against every predicate on that field: one hash lookup for all exact
   literals (typed keys, so ``"100"`` and ``100.0`` never collide; booleans and null use
   sentinels because ``True == 1.0`` in Python), one for all equals-ignore-case texts,
   a ``memcmp`` per prefix/suffix on the cached UTF-8 bytes, two double comparisons per
   numeric range, a masked compare per CIDR. Each predicate that fires sets the truth
   byte of its clause.
3. Each branch ANDs its clauses (contiguous bytes); a subscription matches when one of
   its branches does. Branches are sorted by subscription id, so the result is sorted
   and duplicates are skipped by comparing with the last id emitted.

Invariants: a clause belongs to exactly one branch and one field; ``clause_state`` is
only read after steps 1-2 for the same message; the index is rebuilt lazily (on the next
match) after `set`/`remove`, so a filter change takes effect for the next message.

Body scope decodes the body once with msgspec and flattens it into dotted paths, pruned
to the paths some policy mentions. A body that is not a JSON object fails every
body-scope branch, and so does one nested deeper than ``BODY_DEPTH_LIMIT`` (found by a
bracket count before decoding: msgspec recurses per level, and its RecursionError would
otherwise reach the publisher, at a depth that depends on the caller's stack).
"""

cimport cython
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check
from cpython.long cimport PyLong_Check
from cpython.bool cimport PyBool_Check
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memcmp, memcpy, memset
from libc.math cimport INFINITY

from collections.abc import Mapping

import msgspec

from fastfanout.errors import InvalidArgument

CONDITION_KINDS = {
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
"""The condition kinds this matcher reads, by name (``fastfanout.semantics.filter_policy`` emits)."""

MAX_BODY_DEPTH = BODY_DEPTH_LIMIT
"""Deepest nesting of arrays and objects in a body that body-scope policies read; a
deeper body matches no body-scope policy, as a body that is not JSON."""


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    double PyFloat_AsDouble(object number) except? -1.0


cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int family, const char* source, void* destination)


cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6


# Typed exact-match keys for the JSON literals that Python would otherwise equate with
# numbers (True == 1.0, False == 0.0).
cdef object _TRUE_KEY = ("literal", True)
cdef object _FALSE_KEY = ("literal", False)
cdef object _NULL_KEY = ("literal", None)
cdef object _json_decode = msgspec.json.decode
cdef object _DecodeError = msgspec.DecodeError


cdef inline object _literal_key(object value):
    """The exact-table key of a policy literal (str, float, bool or None)."""
    if value is True:
        return _TRUE_KEY
    if value is False:
        return _FALSE_KEY
    if value is None:
        return _NULL_KEY
    if PyUnicode_Check(value):
        return value
    return float(value)


cdef double _number_of(object value) except? -1.0:
    """The double of an int or float message value; huge ints become +-inf."""
    if PyFloat_Check(value):
        return PyFloat_AS_DOUBLE(value)
    try:
        return PyFloat_AsDouble(value)
    except OverflowError:
        return INFINITY if value > 0 else -INFINITY


cdef int32_t* _int32_array(list values) except? NULL:
    cdef Py_ssize_t count = len(values), i
    if count == 0:
        return NULL
    cdef int32_t* array = <int32_t*>PyMem_Malloc(count * sizeof(int32_t))
    if array == NULL:
        raise MemoryError()
    for i in range(count):
        array[i] = values[i]
    return array


cdef class _Hits:
    def __cinit__(self):
        self.clauses = NULL
        self.excluded = NULL
        self.clause_count = 0
        self.excluded_count = 0

    def __dealloc__(self):
        PyMem_Free(self.clauses)
        PyMem_Free(self.excluded)

    cdef int _fill(self, list clauses, list excluded) except -1:
        self.clauses = _int32_array(clauses)
        self.clause_count = len(clauses)
        self.excluded = _int32_array(excluded)
        self.excluded_count = len(excluded)
        return 0


cdef class _FieldBuilder:
    """Collects the conditions on one field while the index is built."""
    cdef dict exact_clauses         # key -> [clause]
    cdef dict exact_excluded        # key -> [anything-but slot]
    cdef dict lowered_clauses       # lower-cased text -> [clause]
    cdef list texts                 # (kind, str, clause)
    cdef list ranges                # (plain numeric condition, clause)
    cdef list cidrs                 # (plain cidr condition, clause)
    cdef list anything_but          # slot -> clause
    cdef list present
    cdef list absent

    def __cinit__(self):
        self.exact_clauses = {}
        self.exact_excluded = {}
        self.lowered_clauses = {}
        self.texts = []
        self.ranges = []
        self.cidrs = []
        self.anything_but = []
        self.present = []
        self.absent = []

    cdef add(self, tuple condition, int32_t clause):
        """Note one plain condition (already checked by ``_check_condition``)."""
        cdef object key
        cdef int32_t slot
        cdef long kind = condition[0]
        if kind == KIND_EXACT:
            key = _literal_key(condition[1])
            self.exact_clauses.setdefault(key, []).append(clause)
        elif kind == KIND_PREFIX:
            self.texts.append((TEXT_PREFIX, condition[1], clause))
        elif kind == KIND_SUFFIX:
            self.texts.append((TEXT_SUFFIX, condition[1], clause))
        elif kind == KIND_ANYTHING_BUT_PREFIX:
            self.texts.append((TEXT_NOT_PREFIX, condition[1], clause))
        elif kind == KIND_EQUALS_IGNORE_CASE:
            self.lowered_clauses.setdefault(condition[1], []).append(clause)
        elif kind == KIND_ANYTHING_BUT:
            slot = len(self.anything_but)
            self.anything_but.append(clause)
            for value in condition[1]:
                key = _literal_key(value)
                excluded = self.exact_excluded.setdefault(key, [])
                if not excluded or excluded[len(excluded) - 1] != slot:
                    excluded.append(slot)
        elif kind == KIND_NUMERIC:
            self.ranges.append((condition, clause))
        elif kind == KIND_EXISTS:
            (self.present if condition[1] else self.absent).append(clause)
        else:   # KIND_CIDR
            self.cidrs.append((condition, clause))

    cdef _Field build(self):
        cdef _Field field = _Field.__new__(_Field)
        cdef _Hits hits
        cdef Py_ssize_t i, count
        cdef bytes encoded
        for key in set(self.exact_clauses) | set(self.exact_excluded):
            hits = _Hits.__new__(_Hits)
            hits._fill(self.exact_clauses.get(key, []), self.exact_excluded.get(key, []))
            field.exact[key] = hits
        for key, clauses in self.lowered_clauses.items():
            hits = _Hits.__new__(_Hits)
            hits._fill(clauses, [])
            field.lowered[key] = hits

        count = len(self.texts)
        if count:
            field.texts = <text_pred*>PyMem_Malloc(count * sizeof(text_pred))
            if field.texts == NULL:
                raise MemoryError()
        for i in range(count):
            kind, text, clause = self.texts[i]
            encoded = text.encode("utf-8", "surrogatepass")
            field.keep.append(encoded)
            field.text_objects.append(text)
            field.texts[i].text = encoded
            field.texts[i].length = len(encoded)
            field.texts[i].kind = kind
            field.texts[i].clause = clause
            field.text_count = i + 1

        count = len(self.ranges)
        if count:
            field.ranges = <range_pred*>PyMem_Malloc(count * sizeof(range_pred))
            if field.ranges == NULL:
                raise MemoryError()
        for i in range(count):
            numeric, clause = self.ranges[i]
            field.ranges[i].lower = numeric[1]
            field.ranges[i].lower_inclusive = numeric[2]
            field.ranges[i].upper = numeric[3]
            field.ranges[i].upper_inclusive = numeric[4]
            field.ranges[i].clause = clause
            field.range_count = i + 1

        count = len(self.cidrs)
        if count:
            field.cidrs = <cidr_pred*>PyMem_Malloc(count * sizeof(cidr_pred))
            if field.cidrs == NULL:
                raise MemoryError()
        for i in range(count):
            cidr, clause = self.cidrs[i]
            packed = cidr[3]
            memset(field.cidrs[i].network, 0, 16)
            memcpy(field.cidrs[i].network, <const char*>packed, len(packed))
            field.cidrs[i].family = cidr[1]
            field.cidrs[i].prefix_bits = cidr[2]
            field.cidrs[i].clause = clause
            field.cidr_count = i + 1

        field.anything_but = _int32_array(self.anything_but)
        field.anything_but_count = len(self.anything_but)
        if field.anything_but_count:
            field.excluded_scratch = <uint8_t*>PyMem_Malloc(field.anything_but_count)
            if field.excluded_scratch == NULL:
                raise MemoryError()
            memset(field.excluded_scratch, 0, field.anything_but_count)
        field.present = _int32_array(self.present)
        field.present_count = len(self.present)
        field.absent = _int32_array(self.absent)
        field.absent_count = len(self.absent)
        return field


cdef bint _nested_deeper_than(const char* data, Py_ssize_t length, int limit) noexcept nogil:
    """Whether JSON text nests arrays and objects more than ``limit`` levels deep.

    One pass over the bytes, brackets inside strings skipped; text that is not JSON may
    give either answer (the decoder refuses it anyway).
    """
    cdef Py_ssize_t i = 0
    cdef int depth = 0
    cdef bint in_string = False
    cdef char c
    while i < length:
        c = data[i]
        if in_string:
            if c == b'\\':
                i += 1
            elif c == b'"':
                in_string = False
        elif c == b'"':
            in_string = True
        elif c == b'{' or c == b'[':
            depth += 1
            if depth > limit:
                return True
        elif c == b'}' or c == b']':
            depth -= 1
        i += 1
    return False


cdef inline bint memchr_zero(const char* data, Py_ssize_t length) noexcept:
    """Whether a C string has an embedded NUL (then it is not an IP address)."""
    cdef Py_ssize_t i
    for i in range(length):
        if data[i] == 0:
            return True
    return False


cdef inline bint _in_network(const cidr_pred* pred, const uint8_t* address) noexcept:
    cdef int full = pred.prefix_bits >> 3
    cdef int rest = pred.prefix_bits & 7
    cdef uint8_t mask
    if full and memcmp(address, pred.network, full) != 0:
        return False
    if rest:
        mask = <uint8_t>(0xFF << (8 - rest))
        return (address[full] & mask) == pred.network[full]
    return True


cdef class _Field:
    def __cinit__(self):
        self.exact = {}
        self.lowered = {}
        self.text_objects = []
        self.keep = []
        self.texts = NULL
        self.ranges = NULL
        self.cidrs = NULL
        self.anything_but = NULL
        self.excluded_scratch = NULL
        self.present = NULL
        self.absent = NULL
        self.text_count = self.range_count = self.cidr_count = 0
        self.anything_but_count = self.present_count = self.absent_count = 0

    def __dealloc__(self):
        PyMem_Free(self.texts)
        PyMem_Free(self.ranges)
        PyMem_Free(self.cidrs)
        PyMem_Free(self.anything_but)
        PyMem_Free(self.excluded_scratch)
        PyMem_Free(self.present)
        PyMem_Free(self.absent)

    cdef int evaluate(self, object value, uint8_t* state) except -1:
        """Set the clause bytes of every predicate that one value satisfies.

        ``value`` is a str, an int/float, True/False or None; other types match nothing.
        """
        cdef object key
        cdef PyObject* found
        cdef _Hits hits
        cdef Py_ssize_t i
        cdef bint is_text = False, is_number = False
        cdef double number = 0.0
        cdef const char* utf8 = NULL
        cdef Py_ssize_t utf8_length = 0
        cdef const text_pred* text
        cdef const range_pred* interval
        cdef bint hit
        cdef uint8_t address[16]
        cdef char buffer[64]
        cdef int family = 0

        if PyUnicode_Check(value):
            is_text = True
            key = value
        elif PyBool_Check(value):
            key = _TRUE_KEY if value else _FALSE_KEY
        elif PyFloat_Check(value) or PyLong_Check(value):
            is_number = True
            number = _number_of(value)
            key = number
        elif value is None:
            key = _NULL_KEY
        else:
            return 0

        # Exact literals and anything-but exclusions: one typed hash lookup.
        found = PyDict_GetItem(self.exact, key) if self.exact else NULL
        if found != NULL:
            hits = <_Hits>found
            for i in range(hits.clause_count):
                state[hits.clauses[i]] = 1
            for i in range(hits.excluded_count):
                self.excluded_scratch[hits.excluded[i]] = 1
        if self.anything_but_count:
            for i in range(self.anything_but_count):
                if self.excluded_scratch[i]:
                    self.excluded_scratch[i] = 0
                else:
                    state[self.anything_but[i]] = 1

        if is_number:
            for i in range(self.range_count):
                interval = &self.ranges[i]
                if number < interval.lower or number > interval.upper:
                    continue
                if number == interval.lower and not interval.lower_inclusive:
                    continue
                if number == interval.upper and not interval.upper_inclusive:
                    continue
                state[interval.clause] = 1
            return 0
        if not is_text:
            return 0

        if self.lowered:
            found = PyDict_GetItem(self.lowered, value.lower())
            if found != NULL:
                hits = <_Hits>found
                for i in range(hits.clause_count):
                    state[hits.clauses[i]] = 1

        if self.text_count or self.cidr_count:
            try:
                utf8 = PyUnicode_AsUTF8AndSize(value, &utf8_length)
            except UnicodeEncodeError:
                # Lone surrogates have no UTF-8 form: take the slow, exact route.
                self._evaluate_texts_slowly(value, state)
                return 0
        for i in range(self.text_count):
            text = &self.texts[i]
            if text.length > utf8_length:
                hit = False
            elif text.kind == TEXT_PREFIX or text.kind == TEXT_NOT_PREFIX:
                hit = memcmp(utf8, text.text, text.length) == 0
            else:
                hit = memcmp(utf8 + utf8_length - text.length, text.text, text.length) == 0
            if text.kind >= TEXT_NOT_PREFIX:
                hit = not hit
            if hit:
                state[text.clause] = 1

        if self.cidr_count and 0 < utf8_length < 64:
            memcpy(buffer, utf8, utf8_length)
            buffer[utf8_length] = 0
            if memchr_zero(buffer, utf8_length):
                return 0
            memset(address, 0, 16)
            if inet_pton(AF_INET, buffer, address) == 1:
                family = 4
            elif inet_pton(AF_INET6, buffer, address) == 1:
                family = 6
            if family:
                for i in range(self.cidr_count):
                    if self.cidrs[i].family == family and _in_network(&self.cidrs[i], address):
                        state[self.cidrs[i].clause] = 1
        return 0

    cdef int _evaluate_texts_slowly(self, str value, uint8_t* state) except -1:
        cdef Py_ssize_t i
        cdef bint hit
        for i in range(self.text_count):
            text = self.text_objects[i]
            kind = self.texts[i].kind
            if kind == TEXT_PREFIX or kind == TEXT_NOT_PREFIX:
                hit = value.startswith(text)
            else:
                hit = value.endswith(text)
            if kind >= TEXT_NOT_PREFIX:
                hit = not hit
            if hit:
                state[self.texts[i].clause] = 1
        # A string with lone surrogates is never an IP address: no CIDR can match.
        return 0



cdef set _dot_prefixes(str path):
    """Every dot-boundary prefix of a body path, the path included."""
    cdef set prefixes = set()
    cdef Py_ssize_t index = path.find(".")
    while index >= 0:
        prefixes.add(path[:index])
        index = path.find(".", index + 1)
    prefixes.add(path)
    return prefixes


cdef int _flatten(object node, str path, dict wanted, set prefixes, dict out) except -1:
    """Collect the leaves of a decoded JSON value under the paths that ``wanted`` holds.

    Paths join object keys with ``.`` (a key under the empty path is the bare key); array
    elements share their array's path. Subtrees whose path is no prefix of a wanted path
    are skipped, except under the empty path (``""`` prefixes everything).
    """
    cdef PyObject* key_pointer
    cdef PyObject* value_pointer
    cdef Py_ssize_t position = 0, i
    cdef str child_path
    if type(node) is dict:
        while PyDict_Next(<dict>node, &position, &key_pointer, &value_pointer):
            key = <object>key_pointer
            child_path = (path + "." + key) if path else key
            if child_path and child_path not in prefixes:
                continue
            _flatten(<object>value_pointer, child_path, wanted, prefixes, out)
    elif type(node) is list:
        for i in range(PyList_GET_SIZE(node)):
            _flatten(<object>PyList_GET_ITEM(node, i), path, wanted, prefixes, out)
    elif path in wanted:
        values = out.get(path)
        if values is None:
            out[path] = [node]
        else:
            values.append(node)
    return 0


cdef inline int _field_present(_Field field, uint8_t* state) noexcept:
    cdef Py_ssize_t i
    for i in range(field.absent_count):
        state[field.absent[i]] = 0
    for i in range(field.present_count):
        state[field.present[i]] = 1
    return 0


cdef inline bint _is_literal(object value):
    return value is None or PyBool_Check(value) or PyUnicode_Check(value) or PyFloat_Check(value)


cdef int _check_condition(object condition, object path) except -1:
    """Raise InvalidArgument unless ``condition`` is a well-formed plain condition."""
    cdef Py_ssize_t size
    cdef long kind
    if type(condition) is not tuple or len(<tuple>condition) < 2 or not PyLong_Check(
            condition[0]) or PyBool_Check(condition[0]):
        raise InvalidArgument(
            f"filter condition on {path!r} must be a tuple (kind, operands...), "
            f"got {condition!r}")
    size = len(<tuple>condition)
    kind = condition[0] if KIND_EXACT <= condition[0] <= KIND_CIDR else -1
    if kind == KIND_EXACT:
        ok = size == 2 and _is_literal(condition[1])
    elif kind in (KIND_PREFIX, KIND_SUFFIX, KIND_ANYTHING_BUT_PREFIX,
                  KIND_EQUALS_IGNORE_CASE):
        ok = size == 2 and PyUnicode_Check(condition[1])
    elif kind == KIND_ANYTHING_BUT:
        ok = size == 2 and type(condition[1]) is tuple and all(
            PyUnicode_Check(value) or PyFloat_Check(value) for value in condition[1])
    elif kind == KIND_NUMERIC:
        ok = (size == 5 and PyFloat_Check(condition[1]) and PyBool_Check(condition[2])
              and PyFloat_Check(condition[3]) and PyBool_Check(condition[4]))
    elif kind == KIND_EXISTS:
        ok = size == 2 and PyBool_Check(condition[1])
    elif kind == KIND_CIDR:
        ok = (size == 4 and type(condition[3]) is bytes and PyLong_Check(condition[2])
              and ((condition[1] == 4 and len(condition[3]) == 4
                    and 0 <= condition[2] <= 32)
                   or (condition[1] == 6 and len(condition[3]) == 16
                       and 0 <= condition[2] <= 128)))
    else:
        raise InvalidArgument(
            f"unknown filter condition kind {condition[0]!r} on {path!r} (expected one of "
            f"{sorted(CONDITION_KINDS.values())})")
    if not ok:
        raise InvalidArgument(f"malformed filter condition on {path!r}: {condition!r}")
    return 0


cdef int _check_plain(object policy) except -1:
    """Raise InvalidArgument unless ``policy`` is a well-formed plain compiled policy."""
    if (type(policy) is not tuple or len(<tuple>policy) != 2
            or not PyBool_Check(policy[0]) or type(policy[1]) is not tuple):
        raise InvalidArgument(
            f"FilterSet.set needs a plain compiled policy (body_scope, branches), "
            f"CompiledPolicy.plain from parse_policy; got {policy!r:.200}")
    for branch in policy[1]:
        if type(branch) is not tuple:
            raise InvalidArgument(f"a filter branch must be a tuple of clauses, got {branch!r}")
        for clause in branch:
            if (type(clause) is not tuple or len(<tuple>clause) != 2
                    or not PyUnicode_Check(clause[0]) or type(clause[1]) is not tuple
                    or not clause[1]):
                raise InvalidArgument(
                    f"a filter clause must be (path, non-empty tuple of conditions), "
                    f"got {clause!r}")
            for condition in clause[1]:
                _check_condition(condition, clause[0])
    return 0


cdef class FilterSet:
    """The compiled filter policies of many subscriptions, matched natively.

    Policies are compiled by :func:`fastfanout.semantics.filter_policy.parse_policy` and given in
    their plain form (``CompiledPolicy.plain``). Changes take
    effect for the next message (the index is rebuilt lazily on the next match).
    Not thread-safe: one owner (the dispatcher) calls it.
    """

    def __cinit__(self):
        self.policies = {}
        self.dirty = True
        self.attribute_fields = {}
        self.body_fields = {}
        self.body_prefixes = set()
        self.branches = NULL
        self.branch_count = 0
        self.clause_initial = NULL
        self.clause_state = NULL
        self.clause_count = 0
        self.has_body_scope = False
        self.result_buffer = NULL
        self.result_capacity = 0

    def __dealloc__(self):
        PyMem_Free(self.branches)
        PyMem_Free(self.clause_initial)
        PyMem_Free(self.clause_state)
        PyMem_Free(self.result_buffer)

    def __len__(self):
        return len(self.policies)

    def __contains__(self, sub_id):
        return sub_id in self.policies

    def set(self, sub_id, policy):
        """Add or replace the filter policy of a subscription.

        Args:
            sub_id: the subscription id (a signed 64-bit integer).
            policy: the policy in plain form, ``CompiledPolicy.plain`` from
                :func:`~fastfanout.semantics.filter_policy.parse_policy`: ``(body_scope,
                branches)``, each branch a tuple of ``(path, conditions)`` clauses, each
                condition a tuple led by its kind (:data:`CONDITION_KINDS`).

        Raises:
            InvalidArgument: ``policy`` is not a well-formed plain policy or ``sub_id``
                is not a 64-bit integer; nothing changed.
        """
        if not PyLong_Check(sub_id) or PyBool_Check(sub_id) or not (
                -(1 << 63) <= sub_id < (1 << 63)):
            raise InvalidArgument(f"subscription id must be a 64-bit int, got {sub_id!r}")
        _check_plain(policy)
        self.policies[sub_id] = policy
        self.dirty = True

    def remove(self, sub_id):
        """Forget the filter policy of a subscription.

        Args:
            sub_id: the subscription id.

        Returns:
            True if the subscription had a policy here, False otherwise.
        """
        if self.policies.pop(sub_id, None) is None:
            return False
        self.dirty = True
        return True

    def match(self, attributes=None, body=None):
        """Return the ids of the subscriptions whose policy matches a message.

        Args:
            attributes: the message attributes (``str``, ``int``/``float``, ``bytes`` or
                ``list[str]`` values), or None.
            body: the message body, or None. Only body-scope policies look at it.

        Returns:
            The matching subscription ids, ascending.

        Raises:
            InvalidArgument: ``attributes`` is not a mapping or None, or ``body`` is not
                bytes-like or None (an int was taken as that many zero bytes).
        """
        cdef Py_ssize_t count
        cdef const unsigned char[:] view
        cdef const char* body_pointer = NULL
        cdef Py_ssize_t body_len = 0
        if attributes is None:
            attributes = {}
        elif type(attributes) is not dict:
            if not isinstance(attributes, Mapping):
                raise InvalidArgument(f"attributes must be a mapping (a dict) or None, got "
                                      f"{type(attributes).__name__}")
            attributes = dict(attributes)
        if body is not None:
            if not isinstance(body, bytes):
                try:
                    body = memoryview(body).tobytes()
                except TypeError:
                    raise InvalidArgument(f"body must be bytes-like or None, got "
                                          f"{type(body).__name__}") from None
            body_pointer = <bytes>body
            body_len = len(<bytes>body)
        if self.dirty:
            self._rebuild()
        count = self.match_into(attributes, body_pointer, body_len,
                                self.result_buffer, self.result_capacity)
        return [self.result_buffer[i] for i in range(count)]

    cdef int _rebuild(self) except -1:
        cdef dict builders = {}
        cdef _FieldBuilder builder
        cdef list branch_rows = []
        cdef list initial = []
        cdef int32_t clause_index = 0
        cdef Py_ssize_t i, count
        cdef bint body_scope
        for sub_id in sorted(self.policies):
            body_scope, policy_branches = self.policies[sub_id]
            for branch in policy_branches:
                branch_rows.append((sub_id, clause_index, len(branch), body_scope))
                for path, conditions in branch:
                    key = (body_scope, path)
                    builder = builders.get(key)
                    if builder is None:
                        builder = _FieldBuilder.__new__(_FieldBuilder)
                        builders[key] = builder
                    absent_ok = False
                    for condition in conditions:
                        builder.add(condition, clause_index)
                        if condition[0] == KIND_EXISTS and not condition[1]:
                            absent_ok = True
                    initial.append(absent_ok)
                    clause_index += 1

        attribute_fields = {}
        body_fields = {}
        body_prefixes = set()
        for (body_scope, path), builder in builders.items():
            if body_scope:
                body_fields[path] = builder.build()
                body_prefixes |= _dot_prefixes(path)
            else:
                attribute_fields[path] = builder.build()

        count = len(branch_rows)
        cdef branch_t* branches = <branch_t*>PyMem_Malloc(max(count, 1) * sizeof(branch_t))
        cdef uint8_t* clause_initial = <uint8_t*>PyMem_Malloc(max(clause_index, 1))
        cdef uint8_t* clause_state = <uint8_t*>PyMem_Malloc(max(clause_index, 1))
        cdef int64_t* result_buffer = <int64_t*>PyMem_Malloc(
            max(len(self.policies), 1) * sizeof(int64_t))
        if (branches == NULL or clause_initial == NULL or clause_state == NULL
                or result_buffer == NULL):
            PyMem_Free(branches)
            PyMem_Free(clause_initial)
            PyMem_Free(clause_state)
            PyMem_Free(result_buffer)
            raise MemoryError()
        for i in range(count):
            sub_id, first, size, body_scope = branch_rows[i]
            branches[i].sub_id = sub_id
            branches[i].first_clause = first
            branches[i].clause_count = size
            branches[i].body_scope = body_scope
        for i in range(clause_index):
            clause_initial[i] = initial[i]

        PyMem_Free(self.branches)
        PyMem_Free(self.clause_initial)
        PyMem_Free(self.clause_state)
        PyMem_Free(self.result_buffer)
        self.branches = branches
        self.branch_count = count
        self.clause_initial = clause_initial
        self.clause_state = clause_state
        self.clause_count = clause_index
        self.result_buffer = result_buffer
        self.result_capacity = max(len(self.policies), 1)
        self.attribute_fields = attribute_fields
        self.body_fields = body_fields
        self.body_prefixes = body_prefixes
        self.has_body_scope = bool(body_fields) or any(
            (<object>row)[3] for row in branch_rows)
        self.dirty = False
        return 0

    cdef int _apply_attributes(self, dict attributes) except -1:
        cdef PyObject* key_pointer
        cdef PyObject* value_pointer
        cdef PyObject* found
        cdef Py_ssize_t position = 0, i
        cdef _Field field
        cdef object value, item
        cdef uint8_t* state = self.clause_state
        if not self.attribute_fields:
            return 0
        while PyDict_Next(attributes, &position, &key_pointer, &value_pointer):
            found = PyDict_GetItem(self.attribute_fields, <object>key_pointer)
            if found == NULL:
                continue
            field = <_Field>found
            _field_present(field, state)
            value = <object>value_pointer
            if PyUnicode_Check(value) or (
                    (PyLong_Check(value) or PyFloat_Check(value)) and not PyBool_Check(value)):
                field.evaluate(value, state)
            elif type(value) is list:
                # String.Array: the field matches if any element does.
                for i in range(PyList_GET_SIZE(value)):
                    item = <object>PyList_GET_ITEM(value, i)
                    if PyUnicode_Check(item) or (
                            (PyLong_Check(item) or PyFloat_Check(item))
                            and not PyBool_Check(item)):
                        field.evaluate(item, state)
            # Binary (and any other type) is present but matches no value condition.
        return 0

    cdef bint _apply_body(self, const char* body, Py_ssize_t body_len) except -1:
        """Evaluate body-scope fields; False when the body is not a JSON object."""
        cdef dict fields = {}
        cdef _Field field
        cdef list values
        cdef Py_ssize_t i
        if body == NULL or _nested_deeper_than(body, body_len, BODY_DEPTH_LIMIT):
            return False
        try:
            decoded = _json_decode(body[:body_len])
        except (_DecodeError, RecursionError):
            # RecursionError: within the depth limit, but called on a stack already deep
            return False
        if type(decoded) is not dict:
            return False
        if not self.body_fields:
            return True
        _flatten(decoded, "", self.body_fields, self.body_prefixes, fields)
        for path, values in fields.items():
            field = <_Field>self.body_fields[path]
            _field_present(field, self.clause_state)
            for i in range(len(values)):
                field.evaluate(values[i], self.clause_state)
        return True

    @cython.boundscheck(False)
    cdef Py_ssize_t match_into(self, dict attributes, const char* body, Py_ssize_t body_len,
                               int64_t* out, Py_ssize_t capacity) except -1:
        """Write the ids of matching subscriptions (ascending) into ``out``.

        Args:
            attributes: the message attributes (not None; use an empty dict).
            body: the body bytes, or NULL for no body.
            body_len: the body length in bytes.
            out: where ids go; at most ``capacity`` are written.
            capacity: slots in ``out``; ``len(self)`` slots always suffice.

        Returns:
            The number of matching subscriptions, which may exceed ``capacity`` (like
            ``snprintf``: then only the first ``capacity`` ids were written).
        """
        cdef Py_ssize_t b, c, end, matched = 0
        cdef int64_t last_id = 0
        cdef bint have_last = False, body_ok = False, ok
        cdef const branch_t* branch
        cdef uint8_t* state
        if self.dirty:
            self._rebuild()
        if self.branch_count == 0:
            return 0
        state = self.clause_state
        memcpy(state, self.clause_initial, self.clause_count)
        self._apply_attributes(attributes)
        if self.has_body_scope:
            body_ok = self._apply_body(body, body_len)
        for b in range(self.branch_count):
            branch = &self.branches[b]
            if have_last and branch.sub_id == last_id:
                continue    # this subscription already matched through another branch
            if branch.body_scope and not body_ok:
                continue
            ok = True
            end = branch.first_clause + branch.clause_count
            for c in range(branch.first_clause, end):
                if not state[c]:
                    ok = False
                    break
            if ok:
                if matched < capacity:
                    out[matched] = branch.sub_id
                matched += 1
                last_id = branch.sub_id
                have_last = True
        return matched
