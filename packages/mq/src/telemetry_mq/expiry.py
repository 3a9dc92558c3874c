"""Lease expiry and dead-lettering: the lease outcomes that can end in ``<topic>.dlq``.

A record of a group is in exactly one state per partition cursor: ready, delayed, leased or
done (``groups.py``). ``Group.expire``, ``Group.nack`` and ``Group.reject`` take records out of
``leased``; the ones past ``max_deliveries`` (or rejected) come back as a ``Dead`` batch that
is in none of those states until this module settles it (``deadletter.py`` builds the
envelopes).

Invariants:

- A record leaves ``leased`` only into ready, delayed, done or the dead-letter topic: every
  ``Dead`` batch is either marked done after its dead letters are published, or restored to
  ready (the publish failed with an ``MQError``, or the caller was cancelled during it).
- Dead letters are durable before the record counts as done: ``publish`` to the dead-letter
  topic returns only once the letters are committed, and only then does ``Group.mark_dead``
  run; its journal entry is committed before the call returns. A letter whose publish was
  durable but whose caller was cancelled comes again (duplicates allowed, loss not).

Known gap: ``expire`` dead-letters its batches one after the other; when one publish is
cancelled (a long-poll client disconnects) or its journal commit fails, the batches not yet
handled have already left ``leased`` and are never restored: they are stranded, committed
stays pinned, retention stops and the backlog grows.
Known gap: ``read_offsets`` runs outside the ``try``, so a failed read strands its batch too.
Known gap: a restored record comes back with a delivery count already at the maximum, and
``restore`` does not wake long-polling fetches.
Known gap: a topic name too long for the ``.dlq`` suffix can never dead-letter (its records are
restored and redelivered forever), and ``Broker.reject`` reports them as rejected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from .commit import Unit
from .deadletter import dlq_name, envelopes
from .errors import MQError
from .groups import Dead, Group
from .stats import Observer
from .topic import Topic

log = logging.getLogger(__name__)

Commit = Callable[[Sequence[Unit], str], Awaitable[None]]
"""``Broker._commit``: commit the units and wait until they are durable."""

PublishDead = Callable[[str, list[tuple[str, bytes]]], Awaitable[None]]
"""Create the dead-letter topic if needed and publish the letters to it, durably."""


class Expiry:
    """Expires a group's leases and moves its dead batches to the dead-letter topic."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        observer: Observer,
        commit: Commit,
        publish_dead: PublishDead,
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._commit = commit
        self._publish_dead = publish_dead

    async def expire(self, t: Topic, g: Group) -> None:
        """Expire ``g``'s leases past their deadline; dead-letter those past max deliveries."""
        expired, dead = g.expire(self._clock())
        if expired:
            self._observer.expired(t.name, g.name, expired)
        for d in dead:
            await self.dead_letter(t, g, d, "max_deliveries")

    async def settle(self, t: Topic, g: Group, dead: Dead | None, reason: str) -> None:
        """Dead-letter ``dead`` (if any), then commit the group's journal."""
        if dead is not None:
            await self.dead_letter(t, g, dead, reason)
        await self._commit([g.journal], t.name)

    async def dead_letter(self, t: Topic, g: Group, dead: Dead, reason: str) -> None:
        """Publish ``dead`` to ``<topic>.dlq``, then mark it done; on failure restore it."""
        p, offsets = dead
        letters = envelopes(t.name, g, dead, t.logs[p].read_offsets(offsets), reason)
        dlq = dlq_name(t.name)
        try:
            await self._publish_dead(dlq, letters)
        except MQError as e:
            log.error("dead-lettering %d records of %s/%d failed: %s", len(offsets), t.name, p, e)
            g.restore(dead)
            return
        except asyncio.CancelledError:
            # The caller went away (a client disconnected mid-fetch): the records must not be
            # stranded. If the dead letters were written, they come again (duplicates allowed).
            g.restore(dead)
            raise
        g.mark_dead(dead)
        await self._commit([g.journal], t.name)
        self._observer.dead_lettered(t.name, g.name, len(offsets), reason)
        log.warning(
            "dead-lettered %d records of %s partition %d for group %s: %s",
            len(offsets),
            t.name,
            p,
            g.name,
            reason,
        )
