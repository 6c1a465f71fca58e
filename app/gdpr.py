"""The GDPR deadline of an erasure request: one calendar month from its receipt (Art. 12(3) GDPR).

"One month" is calendar arithmetic: 15 March → 15 April, and a day the next month lacks falls back to its
last day (31 January → 28 or 29 February). Extensions by two further months (Art. 12(3)) are the
controller's to record; the service shows the first deadline.
"""

from __future__ import annotations

import calendar
from datetime import datetime


def due_date(received: datetime) -> datetime:
    """The same moment one calendar month after `received` (clamped to the last day of a shorter month)."""
    year, month = (received.year + 1, 1) if received.month == 12 else (received.year, received.month + 1)
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day)
