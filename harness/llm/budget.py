"""Spend caps: stop asking before the money spent could pass a limit (USD).

A request reserves its worst case before it is sent (estimated prompt tokens at the input
price plus the full answer budget at the output price) and settles to its real cost when it
returns, so what is spent plus what is in flight never passes the cap. A refused reservation
raises `SpendCapReached`; the policy then stops sending and the run stops cleanly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


class SpendCapReached(RuntimeError):
    """A request was not sent because it could take the spend past a cap."""


@dataclass(slots=True)
class Reservation:
    """Money held for one request in flight (USD) on the caps that granted it."""

    amount: float
    caps: tuple[SpendCap, ...]
    settled: bool = False


class SpendCap:
    """A limit in USD with what was spent and what is held for requests in flight."""

    def __init__(self, limit_usd: float, label: str) -> None:
        if limit_usd < 0:
            raise ValueError(f"{label}: a spend cap must be >= 0 USD")
        self.limit_usd = float(limit_usd)
        self.label = label
        self.spent_usd = 0.0
        self.held_usd = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpendCap({self.label}: {self.spent_usd:.4f} spent of {self.limit_usd:.4f} USD)"

    def _try_hold(self, amount: float) -> bool:
        with self._lock:
            if self.spent_usd + self.held_usd + amount > self.limit_usd + 1e-12:
                return False
            self.held_usd += amount
            return True

    def _release(self, amount: float, spent: float) -> None:
        with self._lock:
            self.held_usd = max(0.0, self.held_usd - amount)
            self.spent_usd += spent


def reserve(caps: tuple[SpendCap, ...], amount: float, what: str) -> Reservation:
    """Hold `amount` USD on every cap, or raise `SpendCapReached` holding nothing."""
    granted: list[SpendCap] = []
    for cap in caps:
        if not cap._try_hold(amount):
            for g in granted:
                g._release(amount, 0.0)
            raise SpendCapReached(
                f"{cap.label} of ${cap.limit_usd:.4f} reached: ${cap.spent_usd:.4f} spent, "
                f"${cap.held_usd:.4f} in flight, next request ({what}) could cost up to "
                f"${amount:.4f}"
            )
        granted.append(cap)
    return Reservation(amount, tuple(granted))


def settle(reservation: Reservation, spent_usd: float) -> None:
    """Release a reservation and book what the request really cost (0 when it failed)."""
    if reservation.settled:
        return
    reservation.settled = True
    for cap in reservation.caps:
        cap._release(reservation.amount, spent_usd)
