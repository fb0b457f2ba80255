"""The reference model of docs/semantics.md: the test oracle, never a runtime fallback.

``ModelBroker`` (``broker``) follows the semantics page as plainly as Python allows; its
pieces are the argument checks (``checks``), one queue with its visible lists and FIFO
groups (``queue``), the deduplication window (``dedup``) and topics, subscriptions and the
checks of a publish (``publish``).
"""

from fastfanout.model.broker import ModelBroker, ModelMessage
from fastfanout.model.checks import attributes_size

__all__ = ["ModelBroker", "ModelMessage", "attributes_size"]
