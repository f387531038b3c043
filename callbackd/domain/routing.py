"""Which queue's operators call a client back: the queue the client called, then its fall-backs.

A request remembers the queue its client waited in. Its callback rings a free member of
that queue, else of the queue's configured fall-back queues in order. Live callers waiting
in a queue hold back that queue's callbacks, and a fall-back queue with callers of its own
lends nobody. Operators are held per person too (:meth:`OperatorPool.needed`): one who also
answers a queue with callers waiting, served by the dialer or not, takes no callback, so a
caller in sales delays a support callback only through the operators the two queues share. A request with no
queue, or one the dialer does not serve (a web lead, a call to a DID with no queue), may go
to any served queue, and waits while callers wait in any of them.

Pure: the dialer asks :func:`claimable` which requests to claim each turn and
:meth:`Routes.usable` whose members may ring, with the pool's live view passed in; requests
are taken oldest first, each only if an operator of its route is still unassigned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Routes:
    queues: tuple[str, ...]  # the queues the dialer serves, in configured order
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for queue, others in self.fallbacks.items():
            unknown = [q for q in (queue, *others) if q not in self.queues]
            if unknown:
                raise ValueError(f"fall-back queues must be served by the dialer: {', '.join(unknown)}")

    def served(self, queue: str | None) -> bool:
        return queue is not None and queue in self.queues

    def route(self, queue: str | None) -> tuple[str, ...]:
        """The queues whose members may take a callback for a client of ``queue``, in order."""
        if not self.served(queue):
            return self.queues
        assert queue is not None
        return (queue, *(q for q in self.fallbacks.get(queue, ()) if q != queue))

    def usable(self, queue: str | None, waiting: Mapping[str, int], hold: bool) -> tuple[str, ...]:
        """``route`` less the queues that live callers hold back; empty when the request must wait."""
        route = self.route(queue)
        if not hold:
            return route
        if not self.served(queue):
            return () if any(waiting.get(q, 0) for q in route) else route
        if waiting.get(route[0], 0):
            return ()
        return tuple(q for q in route if not waiting.get(q, 0))


def claimable(
    routes: Routes, waiting: Mapping[str, int], hold: bool, has_free: Callable[[Sequence[str]], bool]
) -> tuple[frozenset[str], bool]:
    """The request queues worth claiming now (those with a usable, free operator), and whether
    requests with no served queue are. ``has_free(queues)``: is a member of any of them free?"""
    queues = frozenset(
        q for q in routes.queues if (usable := routes.usable(q, waiting, hold)) and has_free(usable)
    )
    usable = routes.usable(None, waiting, hold)
    return queues, bool(usable) and has_free(usable)
