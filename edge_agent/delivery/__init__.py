"""Delivery of outbox rows to MQTT and S3, in order per channel, with paced retries.

A channel (:class:`Channel`: the MQTT publisher, the S3 mirror) takes one outbox row and returns a
:class:`Delivery`: the outcome and, when not delivered, the reason. The worker needs nothing else of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from edge_agent.store import OutboxItem


class DeliveryResult(enum.Enum):
    """Outcome of delivering one outbox row."""

    DELIVERED = "delivered"
    RETRY = "retry"  # transient: keep the row, back off, keep the channel's order
    DEAD = "dead"  # permanent (e.g. the local file is gone): mark the row dead, go on with the next

    def __bool__(self) -> bool:
        return self is DeliveryResult.DELIVERED


@dataclass(frozen=True)
class Delivery:
    """What a channel did with one row: truthy only when delivered; ``reason`` says why not (secrets redacted)."""

    result: DeliveryResult
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.result)


DELIVERED = Delivery(DeliveryResult.DELIVERED)


def retry(reason: str) -> Delivery:
    """A transient failure: the row stays, the channel backs off."""
    return Delivery(DeliveryResult.RETRY, reason)


def dead(reason: str) -> Delivery:
    """A permanent failure: the row is marked dead, the channel goes on."""
    return Delivery(DeliveryResult.DEAD, reason)


class Channel(Protocol):
    """Where outbox rows of one ``channel`` value go."""

    name: str

    def deliver(self, item: OutboxItem) -> Delivery:
        """Deliver one row; never raises for a delivery problem."""
        ...


__all__ = ["DELIVERED", "Channel", "Delivery", "DeliveryResult", "dead", "retry"]
