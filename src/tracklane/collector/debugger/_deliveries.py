"""Each destination's delivery status for the events the debugger shows (with routing).

Read from the outbox in three queries for a whole page of events (``Outbox.traces``),
then decided per event and destination, first match wins:

- a dead letter: ``dead-lettered`` (attempts, last error);
- a pending row: ``pending`` (attempts so far, next attempt, last error);
- not yet claimed (id above the destination's cursor): ``pending`` with 0 attempts;
- stored before the destination was added (id at or below where its outbox started):
  ``not-routed``, with the reason;
- otherwise the outbox has let the event go, and the routing rules (pure, the same the
  router applies) say why: ``skipped`` (integrations or the destination's sources),
  ``filtered`` (a filter), else ``delivered`` (delivered rows are deleted on success).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

from tracklane.collector._routing import Verdict, filters_for, route

if TYPE_CHECKING:
    from tracklane.collector.router import Router
    from tracklane.collector.storage import EventRow

__all__ = ["deliveries_of"]

_ADDED_LATER = "the destination was added after this event was stored"


def deliveries_of(router: Router, rows: Sequence[EventRow]) -> Dict[int, List[Dict[str, Any]]]:
    """Map each row's seq to its list of ``{destination, status, attempts, ...}``."""
    from tracklane.collector.router import DEFAULT_SOURCE

    traces = {t.destination: t for t in router.outbox.traces([row.seq for row in rows])}
    source_of = router.config.source_of()
    found: Dict[int, List[Dict[str, Any]]] = {}
    for row in rows:
        message = row.to_event()
        source = source_of.get(row.write_key, DEFAULT_SOURCE)
        statuses = found[row.seq] = []
        for item in router.config.destinations:
            trace = traces.get(item.name)
            entry: Dict[str, Any] = {"destination": item.name, "attempts": 0}
            if trace is None:
                entry["status"] = "pending"  # not registered yet: the router is starting
            elif row.seq in trace.dead:
                tries, reason = trace.dead[row.seq]
                entry.update(status="dead-lettered", attempts=tries, lastError=reason)
            elif row.seq in trace.pending:
                attempts, due_at, error = trace.pending[row.seq]
                entry.update(
                    status="pending",
                    attempts=attempts,
                    nextAttempt=_iso(due_at),
                    lastError=error,
                )
            elif row.seq > trace.position:
                entry["status"] = "pending"
            elif row.seq <= trace.start:
                entry.update(status="not-routed", reason=_ADDED_LATER)
            else:
                rules = filters_for(router.config.filters, source, item.name)
                verdict = route(message, source, item, rules).verdict
                entry["status"] = {
                    Verdict.SKIPPED: "skipped",
                    Verdict.FILTERED: "filtered",
                }.get(verdict, "delivered")
                if verdict is Verdict.DELIVER:
                    entry["attempts"] = None  # not kept once delivered
            statuses.append(entry)
    return found


def _iso(moment: float) -> str:
    text = datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
