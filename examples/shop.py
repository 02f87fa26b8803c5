"""An example application: a small shop reporting what its users do, the way Segment's guide does.

Run it against any endpoint that speaks Segment's Tracking API::

    TRACKLANE_WRITE_KEY=demo-key TRACKLANE_HOST=http://127.0.0.1:8787 python examples/shop.py
"""

from __future__ import annotations

import datetime as dt
import sys
from decimal import Decimal

import tracklane as analytics


def main() -> int:
    """Record a short customer journey, then flush and report what happened."""
    analytics.on_error = lambda exc, batch: print(f"dropped {len(batch)}: {exc}", file=sys.stderr)

    # Before sign-up the visitor is anonymous.
    analytics.page(
        anonymous_id="anon-7f3a",
        category="Marketing",
        name="Pricing",
        properties={"url": "https://shop.example/pricing", "referrer": "search"},
    )
    # Sign-up: tie the anonymous visitor to the new account, then describe the user.
    analytics.alias(previous_id="anon-7f3a", user_id="user-1001")
    analytics.identify(
        "user-1001",
        {"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro", "logins": 1},
    )
    analytics.group("user-1001", "acme-inc", {"name": "Acme Inc.", "employees": 42})
    # What the user does, with a Decimal price that must not lose a cent.
    analytics.track(
        "user-1001",
        "Order Completed",
        {
            "order_id": "o-5001",
            "revenue": Decimal("1249.99"),
            "currency": "EUR",
            "products": [{"sku": "kbd-1", "qty": 1}],
        },
        integrations={"All": True, "Mixpanel": False},
    )
    analytics.screen("user-1001", "Checkout", "Receipt", {"platform": "ios"})
    # A historical import: an event that happened last year keeps its own timestamp.
    analytics.track(
        "user-1001",
        "Legacy Order Imported",
        {"order_id": "o-0042", "revenue": Decimal("10.00")},
        timestamp=dt.datetime(2025, 3, 14, 15, 9, 26, tzinfo=dt.timezone.utc),
    )

    result = analytics.flush(timeout=10)
    stats = analytics.stats()
    print(f"flushed: {bool(result)}; {stats}")
    analytics.shutdown()
    return 0 if result and stats is not None and stats.delivered == 7 else 1


if __name__ == "__main__":
    sys.exit(main())
