"""What the hub sends: job events as published (forwarded verbatim) and the hub's own frames."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from longrun_common.events import dumps
from longrun_common.states import TERMINAL
from longrun_common.views import snapshot_job

MAX_SEQ = 2**63 - 1  # seqs are signed 64-bit in Redis (HINCRBY); a `since` above it cannot name an event

# Job ids are UUIDs; anything that could not be one never reaches a Redis key (":" would name another key).
JOB_ID_MAX = 128
JOB_ID = re.compile(rf"[A-Za-z0-9_.\-]{{1,{JOB_ID_MAX}}}")
# Largest frame a client may send (uvicorn closes 1009 above it): a subscribe is about 200 bytes. It also bounds
# what one frame can cost to parse, and uvicorn reads no further frame until the hub took this one.
CLIENT_FRAME_MAX = 8 * 1024
SHOWN_MAX = 40  # characters of a client's bad value quoted back in a message


def shown(value: object) -> str:
    """A client's value as quoted in an error message: its repr, cut short (never echo unbounded input)."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 1] + "…"


def valid_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


@dataclass(slots=True)
class Event:
    """One job event: the publisher's JSON text plus the few fields the hub routes on."""

    seq: int
    type: str
    status: str
    ts: float
    text: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def is_progress(self) -> bool:
        """Only progress events may be coalesced; status changes never are."""
        return self.type == "progress"

    @classmethod
    def parse(cls, raw: bytes | str) -> Event | None:
        """An event from its JSON; None for anything that is not one (never raises on bad data)."""
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
            data = json.loads(text)
            return cls(int(data["seq"]), str(data["type"]), str(data["status"]), float(data["ts"]), text, data)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def coalesced_text(self, skipped: int) -> str:
        """The event's frame, saying how many earlier progress events it stands for."""
        return dumps({**self.data, "coalesced": skipped})


def snapshot_frame(job_id: str, snapshot: dict[str, Any]) -> str:
    """`{"type": "snapshot", "job_id", "job": {…}, "seq": n}`."""
    return dumps({"type": "snapshot", "job_id": job_id, "job": snapshot_job(job_id, snapshot),
                  "seq": int(snapshot.get("seq", 0))})


def reconnect_frame(reason: str, since: int | dict[str, int]) -> str:
    """The hint sent before a 1012 close: where to resume (a seq, or a seq per job on the multiplexed socket)."""
    return dumps({"type": "reconnect", "reason": reason, "since": since})


def end_frame(job_id: str, seq: int) -> str:
    """On the multiplexed socket: the job had already ended at the client's `since` (nothing more will come)."""
    return dumps({"type": "end", "job_id": job_id, "seq": seq})


def error_frame(job_id: str | None, code: int, message: str) -> str:
    """A per-job error on the multiplexed socket (the socket itself stays open). The job id is the client's
    and may be anything: no longer than a job id can be, so an error never costs more than the frame asking."""
    if job_id is not None and len(job_id) > JOB_ID_MAX:
        job_id = job_id[:JOB_ID_MAX]
    return dumps({"type": "error", "job_id": job_id, "code": code, "message": message})


def parse_since(value: object) -> int | None:
    """A `since` / `Last-Event-ID` value as a seq; ValueError with a message for anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"since must be a non-negative integer, got {shown(value)}")
    if isinstance(value, int):
        seq = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        digits = value.strip()  # (ASCII: "²" is a digit to isdigit() but not to int())
        if len(digits.lstrip("0")) > len(str(MAX_SEQ)):
            raise ValueError(f"since must be at most {MAX_SEQ}, got {shown(value)}")
        seq = int(digits)
    else:
        raise ValueError(f"since must be a non-negative integer, got {shown(value)}")
    if seq < 0:
        raise ValueError(f"since must be a non-negative integer, got {shown(value)}")
    if seq > MAX_SEQ:
        raise ValueError(f"since must be at most {MAX_SEQ}, got {shown(value)}")
    return seq
