"""Who may do what in the console: one decorator on every page and action.

viewer reads; operator also sends, runs mailings, imports; admin also manages users, keys,
templates' approval, phones and providers (accounts.ROLES, each including the ones before it).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import abort, g, redirect, request, url_for

from console.accounts import may

PUBLIC = "public"  # the login page: no account needed


def requires(role: str, *, first_password: bool = False) -> Callable[[Callable], Callable]:
    """The page or action needs an account whose role includes `role` (403 otherwise); PUBLIC needs
    none. Without an account: to the login page. With a one-time password still unchanged: to the
    password page, unless `first_password` (the pages that page needs: itself, logout)."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if role != PUBLIC:
                user = g.get("user")
                if user is None:
                    return redirect(url_for("console.auth.login", next=request.full_path.rstrip("?")))
                if user.must_change_password and not first_password:
                    return redirect(url_for("console.auth.password"))
                if not may(user, role):
                    abort(403)
            return view(*args, **kwargs)

        guarded.console_role = role  # tests check that every console view has one
        return guarded

    return decorate
