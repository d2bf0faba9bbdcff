"""The driver's ledger of tries: `engines.work.Attempts` in a named actor on the head node, that
every decoding task and encoder actor of the job reaches by name (engines.ray.driver)."""

from __future__ import annotations

import contextlib

from matpac_cli.engines.work import Attempts

LEDGER_S = 30.0  # the longest a try waits on the ledger's answer (it answers in a millisecond or so)


class Ledger:
    """`Attempts` in an actor on the head node (it outlives any worker and any other node), by
    name, so that a task or actor anywhere on the cluster reaches it; a try that cannot reach it
    goes ahead. (Ray Data's own bound, `max_retries` for its tasks, is deprecated in Ray 2.60.)"""

    def __init__(self, name: str, round_: int = 0) -> None:
        self.name, self.round, self._handle, self._lost = name, round_, None, False
        self.reruns = 0  # files run again in a later round (the driver's count)
        self.seen: dict = {}  # the driver's own list of the round's actors (handles, in order)

    def for_round(self, round_: int) -> Ledger:
        """Keys of their own for each round: a try that a stopped round cut short is no death."""
        view = Ledger(self.name, round_)
        view._handle = self._handle
        return view

    @classmethod
    def start(cls) -> Ledger:
        import uuid

        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ledger = cls(f"matpac-attempts-{uuid.uuid4().hex}")
        heads = [
            n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
        ]
        # on the head itself, never "soft": a soft affinity let the head's raylet spill the ledger to
        # another node, and when that node was lost the restarted ledger had forgotten every try
        # and every actor (the lost round's actors then held the CPUs the next round needed)
        if heads:
            here = NodeAffinitySchedulingStrategy(heads[0], soft=False)
        else:
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        ledger._handle = (
            ray.remote(Attempts)
            .options(name=ledger.name, namespace="matpac", num_cpus=0, max_restarts=-1, scheduling_strategy=here)
            .remote()
        )
        return ledger

    def __getstate__(self) -> dict:
        return {"name": self.name, "round": self.round}

    def __setstate__(self, state: dict) -> None:
        self.name, self.round, self._handle, self.reruns, self._lost = state["name"], state["round"], None, 0, False
        self.seen = {}

    def _actor(self):
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace="matpac")
        return self._handle

    def _call(self, method: str, *args, default=None):
        """One round trip; a ledger that did not answer once is not asked again by this copy (an
        actor's, a task's): a try goes ahead uncounted rather than wait on it for each batch."""
        import ray

        if self._lost:
            return default
        try:
            return ray.get(getattr(self._actor(), method).remote(*args), timeout=LEDGER_S)
        except Exception:  # noqa: BLE001 - the count is a guard against endless retries, never a failure
            self._lost = True
            return default

    def _send(self, method: str, *args) -> None:
        """Fire and forget: nothing waits on the answer (Ray runs one caller's calls to an actor
        in order, so this process's next `begin` comes after it)."""
        if self._lost:
            return
        with contextlib.suppress(Exception):
            getattr(self._actor(), method).remote(*args)

    def begin(self, key) -> int:
        return self._call("begin", (self.round, key), default=0)

    def end(self, key) -> None:
        self._send("end", (self.round, key))

    def retries(self) -> int:
        return self._call("retries", default=0) + self.reruns

    def enlist(self) -> None:
        """From an encoder actor: its own handle, kept with its round."""
        import ray

        self._send("enlist", self.round, ray.get_runtime_context().current_actor)

    def enlisted(self) -> list:
        """The round's encoder actors so far (handles), for the driver's watch. The driver keeps
        each one it has heard of, so that a ledger that restarted (and forgot them) cannot leave
        one running past its round."""
        for actor in self._call("enlisted_now", self.round, default=[]) or []:
            self.seen[actor] = None
        return list(self.seen)

    def dismiss(self) -> None:
        """The round's actors stopped: Ray Data leaves a stopped run's actors to be garbage
        collected, holding their CPUs (and restarting ones their claim) meanwhile."""
        import ray

        for actor in self._call("enlisted_in", self.round, default=[]) or []:
            self.seen[actor] = None
        for actor in self.seen:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.seen.clear()

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self._handle)
