"""Bridges from a fastfanout broker to other brokers: NATS JetStream (docs/bridge.md).

``fastfanout serve --bridge FILE`` (or ``bridge = "FILE"`` in the config file) runs the
export and import rules of ``FILE`` beside the broker.
"""

from fastfanout.bridges.jetstream import Bridge, bridge_unavailable
from fastfanout.bridges.rules import BridgeRules, ExportRule, ImportRule, load_rules

__all__ = ["Bridge", "BridgeRules", "ExportRule", "ImportRule", "bridge_unavailable",
           "load_rules"]
