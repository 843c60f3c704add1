"""Delivery of outbox rows to MQTT and S3, in order per channel, with paced retries.

``DeliveryResult`` is what a channel returns for one row: truthy only when delivered.
"""

from __future__ import annotations

import enum


class DeliveryResult(enum.Enum):
    """Outcome of delivering one outbox row."""

    DELIVERED = "delivered"
    RETRY = "retry"  # transient: keep the row, back off, keep the channel's order
    DEAD = "dead"  # permanent (e.g. the local file is gone): mark the row dead, go on with the next

    def __bool__(self) -> bool:
        return self is DeliveryResult.DELIVERED


__all__ = ["DeliveryResult"]
