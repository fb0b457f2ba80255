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
only read after steps 1-2 for the same message; a filter change takes effect for the
next message.

Changes are incremental, so a topic with thousands of filtered subscriptions can change
one of them between publishes without a rebuild: `set` appends the policy's branches
and clauses after all others and adds its conditions to their fields' predicate arrays
and hash tables (all grown by doubling); `remove` (and the replaced policy of a `set`)
only retires its branches: each is pointed at clause 0, kept false (no predicate sets
it), so the match fails it at its first clause check with no test of its own. Its
clauses keep their predicates, which set truth bytes nobody reads. When the dead weight
(branches, clauses, condition operands) exceeds the live weight by ``COMPACT_SLACK``,
the next match rebuilds the index from the live policies (amortised O(1) per unit
removed). Branches of one subscription stay contiguous, so the duplicate skip still
works; ids appended out of order (a replaced policy) make `match_into` sort its result
until that rebuild.

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
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport qsort
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


cdef int _reserve(void** array, Py_ssize_t* capacity, Py_ssize_t needed,
                  size_t item_size) except -1:
    """Grow ``*array`` (by doubling, contents kept) to hold at least ``needed`` items."""
    cdef Py_ssize_t grown_capacity
    cdef void* grown
    if needed <= capacity[0]:
        return 0
    grown_capacity = max(needed, capacity[0] * 2, 4)
    grown = PyMem_Realloc(array[0], grown_capacity * item_size)
    if grown == NULL:
        raise MemoryError()
    array[0] = grown
    capacity[0] = grown_capacity
    return 0


cdef class _Hits:
    def __cinit__(self):
        self.clauses = NULL
        self.excluded = NULL
        self.clause_count = 0
        self.excluded_count = 0
        self.clause_capacity = 0
        self.excluded_capacity = 0

    def __dealloc__(self):
        PyMem_Free(self.clauses)
        PyMem_Free(self.excluded)

    cdef int add_clause(self, int32_t clause) except -1:
        _reserve(<void**>&self.clauses, &self.clause_capacity, self.clause_count + 1,
                 sizeof(int32_t))
        self.clauses[self.clause_count] = clause
        self.clause_count += 1
        return 0

    cdef int add_excluded(self, int32_t slot) except -1:
        # An anything-but list naming a literal twice excludes its slot once.
        if self.excluded_count and self.excluded[self.excluded_count - 1] == slot:
            return 0
        _reserve(<void**>&self.excluded, &self.excluded_capacity, self.excluded_count + 1,
                 sizeof(int32_t))
        self.excluded[self.excluded_count] = slot
        self.excluded_count += 1
        return 0


cdef inline _Hits _hits_of(dict table, object key):
    """The entry of ``key`` in an exact or lower-cased table, made if missing."""
    cdef PyObject* found = PyDict_GetItem(table, key)
    cdef _Hits hits
    if found != NULL:
        return <_Hits>found
    hits = _Hits.__new__(_Hits)
    table[key] = hits
    return hits


cdef int _push_int32(int32_t** array, Py_ssize_t* count, Py_ssize_t* capacity,
                     int32_t value) except -1:
    _reserve(<void**>array, capacity, count[0] + 1, sizeof(int32_t))
    array[0][count[0]] = value
    count[0] += 1
    return 0


cdef int _compare_ids(const void* left, const void* right) noexcept nogil:
    cdef int64_t a = (<const int64_t*>left)[0]
    cdef int64_t b = (<const int64_t*>right)[0]
    return (a > b) - (a < b)


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
        self.text_capacity = self.range_capacity = self.cidr_capacity = 0
        self.anything_but_capacity = self.present_capacity = self.absent_capacity = 0

    def __dealloc__(self):
        PyMem_Free(self.texts)
        PyMem_Free(self.ranges)
        PyMem_Free(self.cidrs)
        PyMem_Free(self.anything_but)
        PyMem_Free(self.excluded_scratch)
        PyMem_Free(self.present)
        PyMem_Free(self.absent)

    cdef int add(self, tuple condition, int32_t clause) except -1:
        """Index one plain condition (already checked by ``_check_condition``) of
        ``clause``: O(size of the condition), amortised (arrays grow by doubling)."""
        cdef long kind = condition[0]
        cdef int32_t slot
        cdef Py_ssize_t i
        cdef Py_ssize_t capacity
        cdef bytes encoded
        cdef bytes packed
        if kind == KIND_EXACT:
            _hits_of(self.exact, _literal_key(condition[1])).add_clause(clause)
        elif kind == KIND_PREFIX or kind == KIND_SUFFIX or kind == KIND_ANYTHING_BUT_PREFIX:
            text = condition[1]
            encoded = text.encode("utf-8", "surrogatepass")
            _reserve(<void**>&self.texts, &self.text_capacity, self.text_count + 1,
                     sizeof(text_pred))
            self.keep.append(encoded)
            self.text_objects.append(text)
            i = self.text_count
            self.texts[i].text = encoded
            self.texts[i].length = len(encoded)
            self.texts[i].kind = (TEXT_PREFIX if kind == KIND_PREFIX else
                                  TEXT_SUFFIX if kind == KIND_SUFFIX else TEXT_NOT_PREFIX)
            self.texts[i].clause = clause
            self.text_count = i + 1
        elif kind == KIND_EQUALS_IGNORE_CASE:
            _hits_of(self.lowered, condition[1]).add_clause(clause)
        elif kind == KIND_ANYTHING_BUT:
            slot = <int32_t>self.anything_but_count
            capacity = self.anything_but_capacity
            _reserve(<void**>&self.excluded_scratch, &capacity, slot + 1, sizeof(uint8_t))
            _reserve(<void**>&self.anything_but, &self.anything_but_capacity, slot + 1,
                     sizeof(int32_t))
            self.excluded_scratch[slot] = 0
            self.anything_but[slot] = clause
            self.anything_but_count = slot + 1
            for value in condition[1]:
                _hits_of(self.exact, _literal_key(value)).add_excluded(slot)
        elif kind == KIND_NUMERIC:
            _reserve(<void**>&self.ranges, &self.range_capacity, self.range_count + 1,
                     sizeof(range_pred))
            i = self.range_count
            self.ranges[i].lower = condition[1]
            self.ranges[i].lower_inclusive = condition[2]
            self.ranges[i].upper = condition[3]
            self.ranges[i].upper_inclusive = condition[4]
            self.ranges[i].clause = clause
            self.range_count = i + 1
        elif kind == KIND_EXISTS:
            if condition[1]:
                _push_int32(&self.present, &self.present_count, &self.present_capacity, clause)
            else:
                _push_int32(&self.absent, &self.absent_count, &self.absent_capacity, clause)
        else:   # KIND_CIDR
            _reserve(<void**>&self.cidrs, &self.cidr_capacity, self.cidr_count + 1,
                     sizeof(cidr_pred))
            i = self.cidr_count
            packed = condition[3]
            memset(self.cidrs[i].network, 0, 16)
            memcpy(self.cidrs[i].network, <const char*>packed, len(packed))
            self.cidrs[i].family = condition[1]
            self.cidrs[i].prefix_bits = condition[2]
            self.cidrs[i].clause = clause
            self.cidr_count = i + 1
        return 0

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
    their plain form (``CompiledPolicy.plain``). Changes take effect for the next message.
    `set` and `remove` update the index in place, in (amortised) O(size of the policy):
    never a pass over the other subscriptions' policies.
    Not thread-safe: one owner (the dispatcher) calls it.
    """

    def __cinit__(self):
        self.policies = {}
        self.spans = {}
        self.dirty = False
        self.attribute_fields = {}
        self.body_fields = {}
        self.body_prefixes = set()
        self.branches = NULL
        self.branch_count = 0
        self.branch_capacity = 0
        self.clause_initial = NULL
        self.clause_state = NULL
        self.clause_count = 0
        self.clause_capacity = 0
        self.has_body_scope = False
        self.ordered = True
        self.last_sub_id = 0
        self.live_weight = 0
        self.dead_weight = 0
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

        Amortised O(size of ``policy``) (and of the policy it replaces): the other
        subscriptions' policies are not looked at.

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
        _reserve(<void**>&self.result_buffer, &self.result_capacity,
                 len(self.policies) + 1, sizeof(int64_t))
        self.policies[sub_id] = policy
        if self.dirty:
            return      # the rebuild at the next match reads every policy
        try:
            self._forget(sub_id)
            self._append(sub_id, policy)
        except BaseException:
            self.dirty = True   # the index is half-updated: rebuild it from ``policies``
            raise
        self._compact_if_sparse()

    def remove(self, sub_id):
        """Forget the filter policy of a subscription, in O(size of its policy).

        Args:
            sub_id: the subscription id.

        Returns:
            True if the subscription had a policy here, False otherwise.
        """
        if self.policies.pop(sub_id, None) is None:
            return False
        if not self.dirty:
            self._forget(sub_id)
            self._compact_if_sparse()
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

    def index_size(self):
        """(live, dead): the weight (branches, clauses and condition operands) of the
        indexed policies, and of the replaced or removed ones still in the index until
        the next compaction (when the dead outweigh the live by ``COMPACT_SLACK``)."""
        return self.live_weight, self.dead_weight

    cdef int _forget(self, object sub_id) except -1:
        """Retire the branches of ``sub_id``'s indexed policy, if it has one: they stay
        in the arrays, skipped, until the next compaction."""
        cdef Py_ssize_t b
        span = self.spans.pop(sub_id, None)
        if span is None:
            return 0
        first, count, weight = span
        for b in range(first, first + count):
            # Point it at the dead clause: the match skips it at its first clause
            # check, with no test of its own in the loop.
            self.branches[b].first_clause = DEAD_CLAUSE
            self.branches[b].clause_count = 1
        self.live_weight -= weight
        self.dead_weight += weight
        return 0

    cdef int _compact_if_sparse(self) except -1:
        # Amortised: a rebuild costs O(live + dead) and follows at least
        # live + COMPACT_SLACK of dead weight, each unit paid by a set or remove.
        if self.dead_weight > self.live_weight + COMPACT_SLACK:
            self.dirty = True
        return 0

    cdef int _append(self, object sub_id, tuple policy) except -1:
        """Index ``policy`` for ``sub_id``: its branches after every other, their clauses
        after every other, its conditions added to their fields' predicates."""
        cdef bint body_scope = policy[0]
        cdef tuple policy_branches = policy[1]
        cdef Py_ssize_t needed_clauses = 0
        cdef Py_ssize_t capacity
        cdef Py_ssize_t first = self.branch_count
        cdef Py_ssize_t weight = 0
        cdef int32_t clause
        cdef branch_t* branch
        cdef _Field field
        cdef dict fields = self.body_fields if body_scope else self.attribute_fields
        cdef bint absent_ok
        if self.clause_count == 0:
            needed_clauses = 1      # the dead clause, first of all
        for policy_branch in policy_branches:
            needed_clauses += len(<tuple>policy_branch)
        if self.clause_count + needed_clauses >= (1 << 31):
            raise MemoryError("a FilterSet holds at most 2**31 clauses")
        _reserve(<void**>&self.branches, &self.branch_capacity,
                 self.branch_count + len(policy_branches), sizeof(branch_t))
        capacity = self.clause_capacity
        _reserve(<void**>&self.clause_state, &capacity, self.clause_count + needed_clauses,
                 sizeof(uint8_t))
        _reserve(<void**>&self.clause_initial, &self.clause_capacity,
                 self.clause_count + needed_clauses, sizeof(uint8_t))
        if self.clause_count == 0:
            self.clause_initial[DEAD_CLAUSE] = False   # and no predicate ever sets it
            self.clause_count = 1
        clause = <int32_t>self.clause_count
        for policy_branch in policy_branches:
            branch = &self.branches[self.branch_count]
            branch.sub_id = sub_id
            branch.first_clause = clause
            branch.clause_count = <int32_t>len(<tuple>policy_branch)
            branch.body_scope = body_scope
            weight += 1
            for path, conditions in policy_branch:
                found = PyDict_GetItem(fields, path)
                if found == NULL:
                    field = _Field.__new__(_Field)
                    fields[path] = field
                    if body_scope:
                        self.body_prefixes |= _dot_prefixes(path)
                else:
                    field = <_Field>found
                absent_ok = False
                for condition in conditions:
                    field.add(condition, clause)
                    weight += 1
                    if condition[0] == KIND_ANYTHING_BUT:
                        weight += len(<tuple>condition[1])
                    elif condition[0] == KIND_EXISTS and not condition[1]:
                        absent_ok = True
                self.clause_initial[clause] = absent_ok
                clause += 1
                weight += 1
            # Counted only once the branch is whole: a failure above leaves it out.
            self.branch_count += 1
            self.clause_count = clause
        if policy_branches:
            if body_scope:
                self.has_body_scope = True
            if first and sub_id < self.last_sub_id:
                self.ordered = False     # match_into sorts its ids until the next rebuild
            if not first or sub_id > self.last_sub_id:
                self.last_sub_id = sub_id
        self.spans[sub_id] = (first, len(policy_branches), weight)
        self.live_weight += weight
        return 0

    cdef int _rebuild(self) except -1:
        """Index every policy afresh (after a compaction or a failed update)."""
        PyMem_Free(self.branches)
        PyMem_Free(self.clause_initial)
        PyMem_Free(self.clause_state)
        self.branches = NULL
        self.clause_initial = NULL
        self.clause_state = NULL
        self.branch_count = self.branch_capacity = 0
        self.clause_count = self.clause_capacity = 0
        self.spans = {}
        self.attribute_fields = {}
        self.body_fields = {}
        self.body_prefixes = set()
        self.has_body_scope = False
        self.ordered = True
        self.last_sub_id = 0
        self.live_weight = self.dead_weight = 0
        # Ascending ids: the branches come out sorted, so match_into need not sort.
        for sub_id in sorted(self.policies):
            self._append(sub_id, self.policies[sub_id])
        _reserve(<void**>&self.result_buffer, &self.result_capacity,
                 max(len(self.policies), 1), sizeof(int64_t))
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
            ``snprintf``: then only ``capacity`` of them were written, not necessarily
            the lowest).
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
        if not self.ordered and matched > 1:
            # A policy replaced or added out of id order since the last rebuild: its
            # branches sit after higher ids. (A subscription's live branches are still
            # contiguous, so the skip above leaves no duplicates.)
            qsort(out, min(matched, capacity), sizeof(int64_t), _compare_ids)
        return matched
