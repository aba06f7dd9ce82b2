"""Rules every store adapter shares: valid keys and artifact names, time keys, opaque page tokens."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import InvalidPageToken

MAX_ID_LENGTH = 200
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 1024
"""Longest page token a caller may send back (ours are under 200 characters)."""

# Table Storage forbids / \ # ? and control characters in keys; ids are also one path segment
# (artifact folders, blob prefixes). A leading letter or digit keeps "_"/"." names for the store's own use.
_ID = re.compile(r"[A-Za-z0-9][^/\\#?\x00-\x1f\x7f-\x9f]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_experiment_id(experiment_id: str) -> str:
    """Return ``experiment_id`` if it is a valid key, else raise ``ValueError``."""
    if not isinstance(experiment_id, str) or len(experiment_id) > MAX_ID_LENGTH or not _ID.fullmatch(experiment_id):
        raise ValueError(
            f"invalid experiment id {experiment_id!r}: 1-{MAX_ID_LENGTH} characters, starting with a letter "
            "or digit, without / \\ # ? or control characters"
        )
    return experiment_id


def check_artifact_name(name: str) -> str:
    """Return ``name`` if it is a safe relative path (``a/b.json``), else raise ``ValueError``."""
    parts = name.split("/") if isinstance(name, str) else []
    if not name or "\\" in name or _CONTROL.search(name) or any(part in {"", ".", ".."} for part in parts):
        raise ValueError(f"invalid artifact name {name!r}: use a relative path without '..', '.' or '//'")
    return name


def check_idempotency_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError("an idempotency key is a non-empty string")
    return key


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}")
    return limit


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (a naive datetime counts as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


class PageState(BaseModel):
    """Where a listing resumes: each adapter's token is a strict model of this (no coercion, no extra keys),
    so a forged token is refused here, never handed to a query as the wrong type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PageT = TypeVar("PageT", bound=PageState)


def encode_page_token(state: PageState) -> str:
    return base64.urlsafe_b64encode(state.model_dump_json().encode()).decode()


def decode_page_token(token: str, model: type[PageT]) -> PageT:
    """The ``model`` a token made by :func:`encode_page_token` holds; :class:`InvalidPageToken` for
    anything else: too long, not base64, not JSON, nested (pydantic's parser bounds depth), wrong types."""
    problem = "not a page token of this listing (send back the next_page_token a listing returned)"
    if not isinstance(token, str) or len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidPageToken(f"{problem}; at most {MAX_PAGE_TOKEN_CHARS} characters")
    try:
        return model.model_validate_json(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, ValidationError):  # binascii.Error, UnicodeEncodeError and ValidationError included
        raise InvalidPageToken(problem) from None
