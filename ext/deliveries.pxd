# Deliveries: what a receive hands out (deliveries.pyx has the design). C callers (the
# embedded broker's one-message receive, single.pyx) lease one message without a list.
from libc.stdint cimport int64_t, uint32_t

from fastfanout._ext.message cimport Message
from fastfanout._ext.store cimport Store


cdef Message receive_one(Store self, uint32_t qid, int64_t lease_us, int64_t now_us,
                         object owner)
