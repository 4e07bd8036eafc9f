"""The audit log: who changed what, through the console, the API or the command line (issue 12).

Every change a person or an integrator makes calls `record` once, after the change succeeded.
The actor is found from where the call runs: inside a console request the logged-in user
(flask.g.user), inside an API request its key (flask.g.api_key), outside any request the
command line with the OS user. Details are short, have phones masked and must never carry a
secret (a password, a key, a token): callers pass counts, names and states only.
"""
from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass
from typing import Any

from flask import g, has_request_context

from phones import mask_phones_in
from store import Store, User

CONSOLE, API, CLI = "console", "api", "cli"
MAX_DETAIL = 200
# Every action recorded, for the console's filter: "<object type>.<verb>".
ACTIONS = (
    "client.create", "client.update", "client.delete", "client.import",
    "mailing.create", "mailing.update", "mailing.delete", "mailing.cancel", "mailing.retry",
    "message.send", "message.resend", "batch_request.create",
    "template.create", "template.edit", "template.approve",
    "key.create", "key.revoke",
    "user.create", "user.disable", "user.enable", "user.password", "user.reset_password", "user.role",
    "phone.disable", "phone.revoke",
    "provider.pause", "provider.resume",
    "login", "login.failed", "logout",
)
NOT_LOGGED_IN = "(not logged in)"  # the actor of a failed login


@dataclass(frozen=True)
class Actor:
    channel: str  # CONSOLE, API or CLI
    name: str  # a user's email, "key <id> (<name>)", or "cli (<OS user>)"
    id: int | None  # the user's or the key's id


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers)
        return str(os.geteuid())


def current_actor(user: User | None = None) -> Actor:
    """Who is acting here: `user` (a login, before the session exists), the request's key or
    user, or the command line."""
    if has_request_context():
        key = g.get("api_key")
        if key is not None:
            return Actor(API, f"key {key.id} ({key.name})", key.id)
        user = user or g.get("user")
        if user is not None:
            return Actor(CONSOLE, user.email, user.id)
        return Actor(CONSOLE, NOT_LOGGED_IN, None)
    return Actor(CLI, f"cli ({_os_user()})", None)


def record(store: Store, action: str, object_type: str, object_id: Any = None, detail: str = "",
           user: User | None = None) -> None:
    """One row for one change that succeeded: `action` is one of ACTIONS."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    actor = current_actor(user)
    store.record_audit(time.time(), actor.channel, actor.name, actor.id, action, object_type,
                       None if object_id is None else str(object_id), mask_phones_in(detail)[:MAX_DETAIL])
