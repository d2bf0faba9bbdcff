"""The driver's watch on a round's encoder actors, run by Ray Data's own executor at each step.

Ray Data notices an actor's death only through a task it ran on it: an encoder actor that dies
while idle (its process killed for memory, its node lost) stays counted in its pool, which then
waits for ever for it to take work (Ray 2.60; the job hung so). Here each of the round's actors
(the ledger's list: they enlist as they start) is pinged now and then, and a dead one fails the
round at once with `Lost`, so the files left run again on a fresh pool (`driver._run`).
The actors are never Ray Data's to stop mid-round: the ledger holds their handles, so a
scaled-down actor lives on, idle, until the round ends (`Ledger.dismiss`).
"""

from __future__ import annotations

import time

import ray
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.exceptions import ActorDiedError

EVERY_S = 2.0  # how often the actors are checked (a ping is one tiny call to each actor)


class Lost(Exception):
    """A round ended because an encoder actor (or the node it ran on) died."""


class Watch(ExecutionCallback):
    """Ray Data makes one per execution (registered through `DataContext`, by class); `ledger` is
    the round's, set by the driver before the round starts (by reference: the class pickles by
    name where Ray ships the context to the actors)."""

    ledger = None

    def __init__(self) -> None:
        self.pings: dict = {}  # actor handle -> its ping in flight
        self.due = time.monotonic() + EVERY_S

    def on_execution_step(self, executor) -> None:
        now = time.monotonic()
        if now < self.due or self.ledger is None:
            return
        self.due = now + EVERY_S
        if any_dead(self.ledger.enlisted(), self.pings):
            raise Lost()


def any_dead(actors: list, pings: dict) -> bool:
    """Whether one of `actors` is dead, by the answers to pings sent on earlier calls (each
    actor has one ping in flight at most; a busy actor answers when its batch is done)."""
    for actor in actors:
        ping = pings.get(actor)
        if ping is not None:
            ready, _ = ray.wait([ping], timeout=0)
            if not ready:
                continue
            try:
                ray.get(ping)
            except ActorDiedError:
                return True
            except Exception:  # noqa: BLE001 - unreachable for now (a network blip): ask again later
                pass
        pings[actor] = actor.__ray_ready__.remote()
    return False
