"""Fan-out: one thread per destination claims stored events, delivers them, settles.

Each loop turn claims up to the destination's ``claim_size`` events from the outbox (due
retries first), decides per message with :func:`~tracklane.collector._routing.route`
(integrations, sources, filters), hands the rest to the destination and settles the claim:
delivered messages are counted, failures are retried with exponential backoff and full
jitter (``Retry-After`` honoured) until the destination's ``max_attempts``, then
dead-lettered with their last error. A permanent failure (a 4xx) is dead-lettered at once.
When nothing of a claim got through, the destination waits for its first retry before
claiming more, so an endpoint that is down is not sent the whole backlog once each.

A destination with ``claims_in_flight`` above 1 (the webhook: 2) has its next claim read
and routed while earlier ones are delivered and settled in finisher threads. A destination
that ``accepts_wire`` gets each message as the JSON the outbox built (SQLite's ``json_set``)
unless a filter has to look inside it: the common case (no filters) decodes nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

from tracklane.collector._json import loads_stored
from tracklane.collector._routing import Verdict, filters_for, integration_choice, route
from tracklane.collector.config import DestinationConfig, FilterConfig, RoutingConfig
from tracklane.collector.destinations import Destination, destination_class
from tracklane.collector.destinations.base import Envelope, Failure, Outcome
from tracklane.collector.outbox_base import (
    Claim,
    DeadLetter,
    DestinationStatus,
    Outbox,
    Retry,
    Settlement,
    StoredEvent,
    WireEvent,
)

__all__ = ["DEFAULT_SOURCE", "Router"]

logger = logging.getLogger("tracklane.collector.router")

DEFAULT_SOURCE = "default"  # the source of a write key no [[sources]] table lists
_IDLE_POLL = 0.05  # seconds between looks for new events when a destination is idle
_ERROR_PAUSE = 1.0


class _Lane:
    """One destination's routing state, shared by its claim loop and its finishers."""

    def __init__(
        self, item: DestinationConfig, destination: Destination, slots: threading.Semaphore
    ) -> None:
        self.item = item
        self.destination = destination
        self.slots = slots  # one per claim in flight
        self.filters: Dict[str, Tuple[FilterConfig, ...]] = {}
        self.resume_at = 0.0  # no claims before this unix time (nothing got through)


@dataclass
class _Batch:
    """A claim read and routed: what to deliver, and the tally so far."""

    settlement: Settlement = field(default_factory=Settlement)
    envelopes: List[Envelope] = field(default_factory=list)
    kept: List[Union[StoredEvent, WireEvent]] = field(default_factory=list)  # of each envelope

    def keep(self, envelope: Envelope, event: Union[StoredEvent, WireEvent]) -> None:
        """Deliver ``event`` as ``envelope``."""
        self.envelopes.append(envelope)
        self.kept.append(event)

    def skip(self, event_id: int) -> None:
        """Count ``event_id`` as skipped (its integrations or the destination's sources)."""
        self.settlement.skipped += 1
        self.settlement.skipped_ids.append(event_id)

    def drop(self, event_id: int) -> None:
        """Count ``event_id`` as filtered out."""
        self.settlement.filtered += 1
        self.settlement.filtered_ids.append(event_id)


class Router:
    """Delivers stored events to the configured destinations, in background threads."""

    def __init__(
        self,
        outbox: Outbox,
        config: RoutingConfig,
        destinations: Optional[Mapping[str, Destination]] = None,
    ) -> None:
        """Build each destination of ``config`` (or take the given instances by name)."""
        self.outbox = outbox
        self.config = config
        self._source_of = config.source_of()
        given = dict(destinations or {})
        self.destinations: Dict[str, Destination] = {}
        try:
            for item in config.destinations:
                built = given.get(item.name)
                if built is None:
                    built = destination_class(item.type)(item.name, item.settings)
                self.destinations[item.name] = built
        except BaseException:
            self._close_destinations()
            raise
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._started = False

    def start(self) -> None:
        """Register the destinations in the outbox and start one thread for each."""
        if self._started:
            return
        self._started = True
        self.outbox.register(self.destinations)
        for item in self.config.destinations:
            thread = threading.Thread(
                target=self._run, args=(item,), name=f"tracklane.route.{item.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads (a delivery under way finishes first) and close destinations."""
        if self._stop.is_set():
            return
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._close_destinations()

    def status(self) -> List[DestinationStatus]:
        """Every destination's counters, pending work, last error and lag."""
        return self.outbox.status([(item.name, item.type) for item in self.config.destinations])

    def _close_destinations(self) -> None:
        for destination in self.destinations.values():
            try:
                destination.close()
            except Exception:
                logger.exception("closing destination %s failed", destination.name)

    def _run(self, item: DestinationConfig) -> None:
        destination = self.destinations[item.name]
        depth = max(1, destination.claims_in_flight)
        lane = _Lane(item, destination, threading.BoundedSemaphore(depth))
        finisher: Optional[ThreadPoolExecutor] = None
        if depth > 1:
            finisher = ThreadPoolExecutor(depth, thread_name_prefix=f"tracklane.route.{item.name}")
        try:
            while not self._stop.is_set():
                pause = lane.resume_at - time.time()
                if pause > 0:
                    self._stop.wait(pause)
                    continue
                if not lane.slots.acquire(timeout=_IDLE_POLL):
                    continue  # every slot is delivering: look at the stop flag, wait again
                try:
                    claim = self.outbox.claim(item.name, destination.claim_size)
                except Exception:
                    lane.slots.release()
                    logger.exception("claiming work for %s failed", item.name)
                    self._stop.wait(_ERROR_PAUSE)
                    continue
                if claim is None:
                    lane.slots.release()
                    self._stop.wait(_IDLE_POLL)
                    continue
                batch = self._prepare(lane, claim)
                if finisher is None:
                    self._finish(lane, claim, batch)
                else:  # the next claim is read and routed while this one is delivered
                    finisher.submit(self._finish, lane, claim, batch)
        finally:
            if finisher is not None:
                finisher.shutdown(wait=True)  # what is in flight is delivered and settled

    def _prepare(self, lane: _Lane, claim: Claim) -> _Batch:
        """Read a claim's events and decide each one's fate (no delivery yet)."""
        item = lane.item
        batch = _Batch()
        events: List[StoredEvent] = []
        wire: List[WireEvent] = []
        try:
            if lane.destination.accepts_wire:
                wire = self.outbox.wire_events(claim)
            else:
                events = self.outbox.events(claim)
        except Exception as exc:
            logger.exception("reading claimed events for %s failed", item.name)
            failure = Failure(f"reading stored events failed: {exc}")
            batch.settlement.retries = [
                Retry(
                    event_id,
                    row.attempts + 1,
                    self._due(item, row.attempts + 1, failure),
                    failure.error,
                )
                for row in claim.rows
                for event_id in range(row.first, row.last + 1)
            ]
            return batch
        if lane.destination.accepts_wire:
            self._route_wire(lane, wire, batch)
        else:
            self._route_decoded(lane, events, batch)
        return batch

    def _rules(self, lane: _Lane, source: str) -> Tuple[FilterConfig, ...]:
        """The filters of ``lane``'s destination for ``source`` (built once per source)."""
        rules = lane.filters.get(source)
        if rules is None:
            rules = lane.filters[source] = filters_for(self.config.filters, source, lane.item.name)
        return rules

    def _route_decoded(self, lane: _Lane, events: List[StoredEvent], batch: _Batch) -> None:
        for event in events:
            source = self._source_of.get(event.write_key, DEFAULT_SOURCE)
            decision = route(event.message, source, lane.item, self._rules(lane, source))
            if decision.verdict is Verdict.SKIPPED:
                batch.skip(event.id)
            elif decision.verdict is Verdict.FILTERED:
                batch.drop(event.id)
            else:
                assert decision.message is not None
                batch.keep(Envelope(decision.message, source, decision.options), event)

    def _route_wire(self, lane: _Lane, events: List[WireEvent], batch: _Batch) -> None:
        """Route encoded events; only those a filter applies to are decoded."""
        item = lane.item
        name = item.name
        for event in events:
            source = self._source_of.get(event.write_key, DEFAULT_SOURCE)
            rules = self._rules(lane, source)
            if rules:
                message = loads_stored(event.wire.decode("utf-8"))
                decision = route(message, source, item, rules)
                if decision.verdict is Verdict.SKIPPED:
                    batch.skip(event.id)
                elif decision.verdict is Verdict.FILTERED:
                    batch.drop(event.id)
                elif decision.message is message:  # nothing removed: send the bytes as read
                    wire = Envelope(
                        {"messageId": event.message_id}, source, decision.options, event.wire
                    )
                    batch.keep(wire, event)
                else:
                    assert decision.message is not None
                    batch.keep(Envelope(decision.message, source, decision.options), event)
                continue
            # The common case, without route(): the sources and integrations alone decide.
            if item.sources is not None and source not in item.sources:
                batch.skip(event.id)
                continue
            options = None
            if event.integrations is not None:
                enabled, options = integration_choice(event.integrations, name)
                if not enabled:
                    batch.skip(event.id)
                    continue
            batch.keep(
                Envelope({"messageId": event.message_id}, source, options, event.wire), event
            )

    def _finish(self, lane: _Lane, claim: Claim, batch: _Batch) -> None:
        """Deliver a prepared claim, settle it and free its slot (never raises)."""
        try:
            settlement = self._deliver(lane, batch)
            self._settle(claim, settlement)
            if settlement.retries and not settlement.delivered:
                # Nothing got through: wait for the first retry instead of pushing the
                # whole backlog through one failing attempt each.
                first_due = min(retry.due_at for retry in settlement.retries)
                lane.resume_at = max(lane.resume_at, first_due)
        except Exception:  # a bug: leave the claim leased (delivered again after a restart)
            logger.exception("finishing a claim for %s failed", lane.item.name)
        finally:
            lane.slots.release()

    def _deliver(self, lane: _Lane, batch: _Batch) -> Settlement:
        item = lane.item
        settlement = batch.settlement
        envelopes = batch.envelopes
        if not envelopes:
            return settlement
        try:
            outcome = lane.destination.deliver(envelopes)
        except Exception as exc:
            logger.exception("destination %s raised while delivering", item.name)
            outcome = Outcome.all_failed(len(envelopes), Failure(f"{type(exc).__name__}: {exc}"))
        if not outcome.failed:
            settlement.delivered += len(envelopes)
            return settlement
        for index, event in enumerate(batch.kept):
            failure = outcome.failed.get(index)
            if failure is None:
                settlement.delivered += 1
                continue
            attempts = event.attempts + 1
            if failure.permanent or attempts >= item.max_attempts:
                settlement.dead.append(DeadLetter(event.id, attempts, failure.error))
            else:
                due = self._due(item, attempts, failure)
                settlement.retries.append(Retry(event.id, attempts, due, failure.error))
        if settlement.dead:
            logger.warning(
                "%s: %d message(s) dead-lettered: %s",
                item.name,
                len(settlement.dead),
                settlement.dead[-1].error,
            )
        return settlement

    @staticmethod
    def _due(item: DestinationConfig, attempts: int, failure: Failure) -> float:
        """Full-jitter exponential backoff, at least ``Retry-After`` (both capped)."""
        ceiling = min(item.backoff_cap, item.backoff_base * 2 ** min(attempts - 1, 30))
        delay = random.uniform(ceiling / 2, ceiling)
        if failure.retry_after is not None:
            delay = max(delay, min(failure.retry_after, item.backoff_cap))
        return time.time() + delay

    def _settle(self, claim: Claim, settlement: Settlement) -> None:
        while True:
            try:
                self.outbox.settle(claim, settlement)
                return
            except Exception:
                logger.exception("recording the outcome for %s failed", claim.destination)
                if self._stop.wait(_ERROR_PAUSE):
                    return  # left leased: delivered again after a restart (at least once)
