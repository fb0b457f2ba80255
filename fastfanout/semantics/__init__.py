"""What a message's name and attributes mean for where it goes.

- ``filter_policy``: SNS subscription filter policies (validation, compilation, the
  reference matcher).
- ``topic_pattern``: NATS-style subject wildcards for topic names.
- ``routing``: subscriptions resolved into dispatcher targets.
"""
