"""Azure Storage queue limits, enforced by every adapter alike so local runs fail where Azure would."""

from __future__ import annotations

import re

MAX_MESSAGE_BYTES = 48 * 1024
"""A message holds 64 KiB; in base64 text (what the Functions trigger reads) that is 48 KiB of UTF-8."""
MAX_MESSAGES_PER_RECEIVE = 32
MAX_SECONDS = 7 * 24 * 3600
_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def check_queue_name(name: str) -> str:
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid queue name {name!r}: 3-63 lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def check_send(body: str, delay_seconds: int) -> None:
    if not isinstance(body, str):
        raise TypeError(f"a message body is a str, not {type(body).__name__}")
    size = len(body.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message body is {size} bytes, more than the {MAX_MESSAGE_BYTES} a queue accepts")
    if not 0 <= delay_seconds <= MAX_SECONDS:
        raise ValueError(f"delay_seconds must be between 0 and {MAX_SECONDS}, not {delay_seconds}")


def check_receive(max_messages: int, visibility_timeout: int) -> None:
    if not 1 <= max_messages <= MAX_MESSAGES_PER_RECEIVE:
        raise ValueError(f"max_messages must be between 1 and {MAX_MESSAGES_PER_RECEIVE}, not {max_messages}")
    if not 1 <= visibility_timeout <= MAX_SECONDS:
        raise ValueError(f"visibility_timeout must be between 1 and {MAX_SECONDS}, not {visibility_timeout}")
