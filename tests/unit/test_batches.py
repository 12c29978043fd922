"""A batch's reference, as messages carry it, is checked where it is read (POST /batches and
GET /batches/{id} against the real service: tests/service/test_batches.py)."""

from __future__ import annotations

import pytest

from shared.errors import MessageError
from shared.messages import BatchRef


def test_a_batch_reference_is_checked_where_it_is_read() -> None:
    batch_id = "0123456789abcdef" * 2
    ref = BatchRef.parse(f"{batch_id}/2/5")
    assert ref == BatchRef(batch_id, 2, 5)
    assert BatchRef.parse(str(ref)) == ref
    assert BatchRef.parse(None) is None
    for bad in (f"{batch_id}/5/5", f"{batch_id}/x/5", "nope/0/1", f"{batch_id}/0", 7):
        with pytest.raises(MessageError):
            BatchRef.parse(bad)
