"""Batch requests: one approved template, up to 5,000 recipients, each with its own variables and
optionally its own moment (send_at) and priority, queued through the outbox in one transaction.

An invalid recipient (its phone, its variables, a text too long) is rejected alone, named by its
index in the request and the reason; the others are queued. A phone and text that went out within
DEDUP_SECONDS (from this request or another) is recorded CANCELED as a duplicate (store.py).
"""
from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

import templates
from clients import field_path
from config import Config
from models import BatchRecipient
from store import CANCELED, PRIORITIES, BatchMessage, Store

log = logging.getLogger(__name__)


class NothingToSend(Exception):
    """Every recipient of the request was rejected: nothing was recorded."""

    def __init__(self, rejected: list[dict[str, Any]]):
        super().__init__("every recipient was rejected: nothing was queued")
        self.rejected = rejected


def accept(store: Store, config: Config, template_name: str, priority: str, recipients: list[Any],
           context: dict[str, Any], api_key_id: int | None) -> dict[str, Any]:
    """Check each recipient against the template's approved version and queue those that pass.
    Raises templates.TemplateUnusable, NothingToSend."""
    stored, template = templates.approved(store, template_name, frozenset(), "a batch request",
                                          request_variables=True)
    now = time.time()
    messages, rejected = [], []
    for index, raw in enumerate(recipients):
        try:
            recipient = BatchRecipient.model_validate(raw, context=context)
            text = templates.text_for(template, recipient.variables, context["max_segments"])
        except ValidationError as error:
            rejected.append({"index": index, "reason": _reason(error)})
            continue
        except ValueError as error:
            rejected.append({"index": index, "reason": str(error)})
            continue
        due = max(now, recipient.send_at.timestamp()) if recipient.send_at else now
        messages.append(BatchMessage(index, recipient.phone, text, due, PRIORITIES[recipient.priority or priority]))
    if not messages:
        raise NothingToSend(rejected)
    request_id, outcome = store.accept_batch_request(stored, api_key_id, len(recipients), json.dumps(rejected),
                                                     messages, config.dedup_seconds, config.sms_valid_seconds)
    queued = [{"index": index, "id": message_id, "status": status}
              for index, (message_id, status) in sorted(outcome.items())]
    duplicates = sum(1 for message in queued if message["status"] == CANCELED)
    log.info("Batch request %d (template %s, version %d): %d queued, %d duplicates, %d rejected", request_id,
             stored.name, stored.approved_version, len(queued) - duplicates, duplicates, len(rejected))
    return {"id": request_id, "template": stored.name, "template_version": stored.approved_version,
            "queued": len(queued) - duplicates, "duplicates": duplicates, "rejected": rejected, "messages": queued}


def state(store: Store, request_id: int) -> dict[str, Any] | None:
    """The request and its messages counted by status now."""
    found = store.batch_request(request_id)
    if found is None:
        return None
    return {"id": found.id, "template_id": found.template_id, "template_version": found.template_version,
            "created_at": datetime.fromtimestamp(found.created_at, UTC), "recipients": found.recipients,
            "rejected": json.loads(found.rejected),
            "total": sum(found.counts.values()), "counts": found.counts}


def _reason(error: ValidationError) -> str:
    """The first problem of each field, as the API's 400 answers word them."""
    found: dict[str, str] = {}
    for item in error.errors():
        found.setdefault(field_path(item), item["msg"].removeprefix("Value error, "))
    return "; ".join(f"{path}: {message}" for path, message in found.items())
