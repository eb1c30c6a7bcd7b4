"""
Test helpers: :class:`FakeCobalt`, a simulator of Cobalt's task API, event factories, and
:class:`SinkContract`, the tests every sink passes (docs/writing-a-sink.md).

```python
from cobalt_async.testing import FakeCobalt, make_task_created_event, signed_delivery
```

``app_with_fake(app, fake)`` runs a FastAPI app against a fake (needs the ``fastapi`` extra).
"""

from .._signing import sign_webhook
from ._contract import SinkContract
from ._factories import (
    make_patient_live_fetch_completed_event,
    make_task_created_event,
    make_task_failed_event,
    make_task_note_created_event,
    make_task_note_failed_event,
    signed_delivery,
)
from ._fake import FakeCobalt, FakeStats
from ._fastapi import app_with_fake

__all__ = [
    "FakeCobalt",
    "FakeStats",
    "SinkContract",
    "app_with_fake",
    "make_patient_live_fetch_completed_event",
    "make_task_created_event",
    "make_task_failed_event",
    "make_task_note_created_event",
    "make_task_note_failed_event",
    "sign_webhook",
    "signed_delivery",
]
