# The native filter-policy matcher: compiled predicates per field, one truth byte per
# clause, one AND per expanded $or branch.
from libc.stdint cimport int32_t, int64_t, uint8_t


# The kinds leading each condition tuple of the plain compiled form that
# fastfanout.semantics.filter_policy emits (its KIND_* constants; a unit test checks they agree).
cdef enum condition_kind:
    KIND_EXACT = 0
    KIND_PREFIX = 1
    KIND_SUFFIX = 2
    KIND_ANYTHING_BUT_PREFIX = 3
    KIND_EQUALS_IGNORE_CASE = 4
    KIND_ANYTHING_BUT = 5
    KIND_NUMERIC = 6
    KIND_EXISTS = 7
    KIND_CIDR = 8


# Deepest nesting of arrays and objects a body may have for body-scope matching; a
# deeper body is treated as not JSON (fastfanout.semantics.filter_policy.MAX_BODY_DEPTH
# mirrors it; a unit test checks they agree). The decoder recurses per level and would
# otherwise fail with RecursionError at a depth that depends on the caller's stack.
cdef enum:
    BODY_DEPTH_LIMIT = 128


cdef enum text_kind:
    TEXT_PREFIX = 0
    TEXT_SUFFIX = 1
    TEXT_NOT_PREFIX = 2     # anything-but {"prefix": ...}


cdef struct text_pred:
    const char* text        # UTF-8, owned by a bytes object in _Field.keep
    Py_ssize_t length       # bytes
    int32_t clause
    uint8_t kind            # a text_kind


cdef struct range_pred:
    double lower            # -inf when open
    double upper            # +inf when open
    uint8_t lower_inclusive
    uint8_t upper_inclusive
    int32_t clause


cdef struct cidr_pred:
    uint8_t family          # 4 or 6
    uint8_t prefix_bits     # 0..32 or 0..128
    uint8_t network[16]     # network address, host bits zero
    int32_t clause


cdef struct branch_t:
    int64_t sub_id          # subscription owning this branch
    int32_t first_clause    # clauses of a branch are contiguous in the state array
    int32_t clause_count
    uint8_t body_scope      # 1: needs a body that is a JSON object


cdef class _Hits:
    """What one exact literal (or one lower-cased text) does to a field's clauses."""
    cdef int32_t* clauses           # clauses that hold when a value equals the literal
    cdef Py_ssize_t clause_count
    cdef int32_t* excluded          # anything-but slots (in _Field) the literal excludes
    cdef Py_ssize_t excluded_count
    cdef Py_ssize_t clause_capacity
    cdef Py_ssize_t excluded_capacity

    cdef int add_clause(self, int32_t clause) except -1
    cdef int add_excluded(self, int32_t slot) except -1


cdef class _Field:
    """Every predicate of every subscription on one attribute name or body path."""
    cdef dict exact                 # typed literal -> _Hits
    cdef dict lowered               # lower-cased text -> _Hits (equals-ignore-case)
    cdef text_pred* texts
    cdef Py_ssize_t text_count
    cdef list text_objects          # the str of each text_pred (fallback for surrogates)
    cdef range_pred* ranges
    cdef Py_ssize_t range_count
    cdef cidr_pred* cidrs
    cdef Py_ssize_t cidr_count
    cdef int32_t* anything_but      # slot -> clause, for anything-but literal lists
    cdef Py_ssize_t anything_but_count
    cdef uint8_t* excluded_scratch  # slot -> excluded by the value being evaluated
    cdef int32_t* present           # clauses with {"exists": true}
    cdef Py_ssize_t present_count
    cdef int32_t* absent            # clauses with {"exists": false}
    cdef Py_ssize_t absent_count
    cdef list keep                  # owners of the buffers the structs point into
    cdef Py_ssize_t text_capacity   # allocated entries of each array (grown by doubling;
    cdef Py_ssize_t range_capacity  # excluded_scratch has anything_but_capacity)
    cdef Py_ssize_t cidr_capacity
    cdef Py_ssize_t anything_but_capacity
    cdef Py_ssize_t present_capacity
    cdef Py_ssize_t absent_capacity

    cdef int add(self, tuple condition, int32_t clause) except -1
    cdef int evaluate(self, object value, uint8_t* state) except -1
    cdef int _evaluate_texts_slowly(self, str value, uint8_t* state) except -1


# Dead weight (of removed or replaced policies) a FilterSet carries beyond its live
# weight before the next match rebuilds its index.
cdef enum:
    COMPACT_SLACK = 1024
    DEAD_CLAUSE = 0         # always false: a retired branch's only clause


cdef class FilterSet:
    cdef dict policies              # sub_id -> plain compiled policy (body_scope, branches)
    cdef dict spans                 # sub_id -> (first branch, branch count, weight) indexed
    cdef bint dirty                 # the index must be rebuilt from ``policies``
    cdef dict attribute_fields      # attribute name -> _Field
    cdef dict body_fields           # dotted body path -> _Field
    cdef set body_prefixes          # every dot-boundary prefix of an indexed body path
    cdef branch_t* branches         # by subscription, in the order indexed
    cdef Py_ssize_t branch_count
    cdef Py_ssize_t branch_capacity
    cdef uint8_t* clause_initial    # truth of each clause before any field is seen
    cdef uint8_t* clause_state      # truth of each clause for the current message
    cdef Py_ssize_t clause_count
    cdef Py_ssize_t clause_capacity # of clause_initial and clause_state
    cdef bint has_body_scope
    cdef bint ordered               # branches ascend by sub_id (else match_into sorts)
    cdef int64_t last_sub_id        # highest sub_id indexed since the last rebuild
    cdef Py_ssize_t live_weight     # branches + clauses + operands of indexed policies
    cdef Py_ssize_t dead_weight     # the same of retired ones still in the arrays
    cdef int64_t* result_buffer     # scratch for match(): one slot per subscription
    cdef Py_ssize_t result_capacity

    cdef int _forget(self, object sub_id) except -1
    cdef int _compact_if_sparse(self) except -1
    cdef int _append(self, object sub_id, tuple policy) except -1
    cdef int _rebuild(self) except -1
    cdef int _apply_attributes(self, dict attributes) except -1
    cdef bint _apply_body(self, const char* body, Py_ssize_t body_len) except -1
    cdef Py_ssize_t match_into(self, dict attributes, const char* body, Py_ssize_t body_len,
                               int64_t* out, Py_ssize_t capacity) except -1
