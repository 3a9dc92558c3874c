"""Lease expiry and dead-lettering: the lease outcomes that can end in ``<topic>.dlq``.

A record of a group is in exactly one state per partition cursor: ready, delayed, leased or
done (``groups.py``). ``Group.expire``, ``Group.nack`` and ``Group.reject`` take records out of
``leased``; the ones past ``max_deliveries`` (or rejected) come back as ``Dead`` batches that
are in none of those states until this module settles them (``deadletter.py`` builds the
envelopes).

Invariants:

- A record leaves ``leased`` only into ready, delayed, done or the dead-letter topic: the
  ``Dead`` batches of one call are settled together, all or nothing. Their letters go out in
  one publish; only once it is durable are they all marked done. Whatever goes wrong before
  (a failed read, the dead-letter topic cannot be created or is full, a failed commit, the
  caller cancelled because its client went away) restores every one of them to ready, in a
  ``finally``, and wakes the group's waiting fetches.
- A restored record's delivery count goes back to ``max_deliveries - 1``: its next delivery is
  the last one again, and when that fails too the dead-letter publish is tried again.
- Dead letters are durable before the record counts as done: ``publish`` to the dead-letter
  topic returns only once the letters are committed, and only then does ``Group.mark_dead``
  run; its journal entry is committed before the call returns. A letter whose publish was
  durable but whose caller was cancelled comes again (duplicates allowed, loss not).
- The caller learns of a failure: ``settle`` (reject, nack) raises ``DeadLetterError`` after
  restoring; ``expire`` (fetch, maintenance) logs it and goes on, the records being deliverable.
- Records of a dead-letter topic never dead-letter (their groups have no ``max_deliveries``,
  and ``Broker.reject`` refuses them): there is no ``<topic>.dlq.dlq``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from .commit import Unit
from .deadletter import envelopes
from .errors import DeadLetterError, MQError
from .groups import Dead, Group
from .stats import Observer
from .topic import Topic

log = logging.getLogger(__name__)

Commit = Callable[[Sequence[Unit], str], Awaitable[None]]
"""``Broker._commit``: commit the units and wait until they are durable."""

PublishDead = Callable[[str, list[tuple[str, bytes]]], Awaitable[None]]
"""Publish letters of a topic to its dead-letter topic (created if needed), durably."""


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
        """Expire ``g``'s leases past their deadline; dead-letter those past max deliveries.

        A failed dead-lettering is logged (its records were restored, so they come again).
        """
        expired, dead = g.expire(self._clock())
        if expired:
            self._observer.expired(t.name, g.name, expired)
            t.notify_group(g.name)
        if dead:
            try:
                await self.dead_letter(t, g, dead, "max_deliveries")
            except MQError as e:
                log.error("%s; the records stay deliverable", e)

    async def settle(self, t: Topic, g: Group, dead: Sequence[Dead], reason: str) -> None:
        """Dead-letter ``dead`` (if any), then commit the group's journal.

        Raises ``DeadLetterError`` when the dead letters could not be written (the records
        were restored for redelivery).
        """
        if dead:
            await self.dead_letter(t, g, dead, reason)
        await self._commit([g.journal], t.name)

    async def dead_letter(self, t: Topic, g: Group, dead: Sequence[Dead], reason: str) -> None:
        """Publish ``dead`` to ``<topic>.dlq``, then mark it done; else restore all of it."""
        records = sum(len(offsets) for _, offsets in dead)
        published = False
        try:
            letters: list[tuple[str, bytes]] = []
            for d in dead:
                p, offsets = d
                letters += envelopes(t.name, g, d, t.logs[p].read_offsets(offsets), reason)
            await self._publish_dead(t.name, letters)
            published = True
        except Exception as e:
            raise DeadLetterError(
                f"dead-lettering {records} records of {t.name} (group {g.name}) failed: {e}",
                topic=t.name,
            ) from e
        finally:
            # Also on cancellation (the client of a fetch went away): nothing is stranded.
            if not published:
                for d in dead:
                    g.restore(d)
                t.notify_group(g.name)
        for d in dead:
            g.mark_dead(d)
        await self._commit([g.journal], t.name)
        self._observer.dead_lettered(t.name, g.name, records, reason)
        log.warning(
            "dead-lettered %d records of %s (partitions %s) for group %s: %s",
            records,
            t.name,
            ",".join(str(p) for p, _ in dead),
            g.name,
            reason,
        )
