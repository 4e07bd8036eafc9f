"""People's accounts for the console: roles, passwords (Argon2id), sessions, login throttling.

Everything is kept in the database (store.py, "the console" section), so every gunicorn worker
and every host sees the same accounts, sessions and failed logins.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from store import Store, User, UserExists

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)  # each may do what the ones before it may
MIN_PASSWORD_LENGTH = 10
SESSION_SECONDS = 12 * 3600  # a working day; a new login after that
# Failed logins within THROTTLE_SECONDS: past ACCOUNT_LIMIT for one email, or ADDRESS_LIMIT from
# one client address, logins there are refused until the oldest of them is THROTTLE_SECONDS old.
THROTTLE_SECONDS = 15 * 60
ACCOUNT_LIMIT = 5
ADDRESS_LIMIT = 20
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# Why change_password refuses (the console shows each in the reader's language).
WRONG_PASSWORD = "the current password is wrong"
SAME_PASSWORD = "the new password must differ from the current one"
EMAIL_AS_PASSWORD = "a password must not be the email address"

# argon2-cffi's defaults: Argon2id with RFC 9106's low-memory profile (t=3, 64 MiB, p=4).
_hasher = PasswordHasher()


class AccountError(ValueError):
    """A refused input: its text says what to fix."""


class AccountExists(AccountError):
    """The email has an account already."""


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    retry_after: float | None = None  # set when throttled: seconds until a login may be tried


def normalize_email(text: str) -> str:
    email = text.strip().lower()
    if len(email) > 254 or not EMAIL.fullmatch(email):
        raise AccountError(f"{text.strip()!r} is not an email address")
    return email


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@cache
def _unknown_user_hash() -> str:
    """Verified when the email is unknown, so that a wrong email costs the time of a wrong password.
    Made on first use: a hash costs 64 MiB and a tenth of a second, which no import should pay."""
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str, email: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password has at least {MIN_PASSWORD_LENGTH} characters"
    if password.strip().lower() == email:
        return EMAIL_AS_PASSWORD
    return None


def one_time_password() -> str:
    return secrets.token_urlsafe(12)


def create(store: Store, email: str, role: str, password: str | None, now: float) -> tuple[int, str | None]:
    """A new account: (id, its one-time password) without `password`, which must be changed at the
    first login; (id, None) with a password the person chose."""
    email = normalize_email(email)
    if role not in ROLES:
        raise AccountError(f"a role is one of: {', '.join(ROLES)}")
    generated = None
    if password is None:
        password = generated = one_time_password()
    problem = password_problem(password, email)
    if problem:
        raise AccountError(problem)
    try:
        user_id = store.create_user(email, role, hash_password(password), generated is not None, now)
    except UserExists:
        raise AccountExists(f"there is an account for {email} already") from None
    return user_id, generated


def _account_key(email: str) -> str:
    return f"account:{email}"


def _keys(email: str, address: str) -> tuple[str, str]:
    return _account_key(email), f"address:{address}"


def retry_after(store: Store, email: str, address: str, now: float) -> float | None:
    """Seconds until this email may try to log in from this address; None if it may now."""
    account, client = _keys(email, address)
    failures = store.login_failures([account, client], now - THROTTLE_SECONDS)
    waits = []
    for key, limit in ((account, ACCOUNT_LIMIT), (client, ADDRESS_LIMIT)):
        count, oldest = failures.get(key, (0, now))
        if count >= limit:
            waits.append(oldest + THROTTLE_SECONDS - now)
    return max(*waits, 1.0) if waits else None


def log_in(store: Store, email_text: str, password: str, address: str, now: float) -> LoginResult:
    """The active account these credentials open, or LoginResult(None) (with `retry_after` when
    throttled: the password is then not even checked). A failure counts against the email and the address."""
    try:
        email = normalize_email(email_text)
    except AccountError:
        email = email_text.strip().lower()[:254]
    wait = retry_after(store, email, address, now)
    if wait is not None:
        return LoginResult(None, wait)
    user = store.user_by_email(email)
    matches = verify_password(user.password_hash if user else _unknown_user_hash(), password)
    if user is None or not matches or user.disabled_at is not None:
        store.record_login_failure(list(_keys(email, address)), now, now - THROTTLE_SECONDS)
        return LoginResult(None)
    store.clear_login_failures(_keys(email, address)[0])
    return LoginResult(user)


def token_hash(token: str) -> str:
    """Sessions are kept by the SHA-256 of their token: the database alone opens none."""
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(store: Store, user: User, now: float) -> str:
    """A new session for `user`: its token, for the (signed) session cookie."""
    token = secrets.token_urlsafe(32)
    store.create_console_session(token_hash(token), user.id, now, now + SESSION_SECONDS)
    return token


def change_password(store: Store, user: User, current: str, new: str, session_token: str) -> None:
    """Set a new password; every other session of the account ends."""
    if not verify_password(user.password_hash, current):
        raise AccountError(WRONG_PASSWORD)
    if new == current:
        raise AccountError(SAME_PASSWORD)
    problem = password_problem(new, user.email)
    if problem:
        raise AccountError(problem)
    store.set_user_password(user.id, hash_password(new), token_hash(session_token))


def disable(store: Store, email: str) -> bool:
    """Disable an account and end its sessions; False if there is no such active account."""
    user = store.user_by_email(normalize_email(email))
    return user is not None and store.disable_user(user.id)


def user_of(store: Store, email: str) -> User:
    """The account of `email`; AccountError if it has none."""
    user = store.user_by_email(normalize_email(email))
    if user is None:
        raise AccountError(f"there is no account for {email.strip()}")
    return user


def reset_password(store: Store, user: User, password: str | None) -> str | None:
    """A forgotten password replaced: a one-time one (returned; the person chooses theirs at the
    next login), or `password` if given. Their sessions end and their failed logins are forgotten."""
    generated = None
    if password is None:
        password = generated = one_time_password()
    problem = password_problem(password, user.email)
    if problem:
        raise AccountError(problem)
    store.reset_user_password(user.id, hash_password(password), generated is not None, _account_key(user.email))
    return generated


def set_role(store: Store, user: User, role: str) -> bool:
    """False if the account has that role already."""
    if role not in ROLES:
        raise AccountError(f"a role is one of: {', '.join(ROLES)}")
    return store.set_user_role(user.id, role)


def may(user: User, role: str) -> bool:
    """Whether `user`'s role includes what `role` may do."""
    return ROLES.index(user.role) >= ROLES.index(role)
