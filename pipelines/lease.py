"""One writer per output: a lease object in the output location.

A job writes ``<output>/_ugc_crop_lease.json`` (owner, run id, start, expiry) before it plans, renews it
while it runs and deletes it when it ends. A second driver on the same output finds a live lease and
refuses at once; a lease whose holder died expires ``ttl_s`` after its last renewal, and
``--take-over-lease`` takes one over before that. Object stores have no create-if-absent here, so a
taker writes its lease, waits, and reads it back: of two drivers starting within that pause, the
one whose write landed last keeps it and the other refuses.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

from pipelines.storage import Location, read_bytes, write_bytes

LEASE_NAME = "_ugc_crop_lease.json"
TTL_S = 120.0  # a lease not renewed for this long is stale (its driver died)
SETTLE_S = 1.0  # between writing a lease and reading it back


class LeaseHeld(RuntimeError):
    """Another live driver writes this output."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Lease:
    """The lease this driver holds on ``output`` until ``release``; a thread renews it."""

    output: Location
    owner: str
    run_id: str
    ttl_s: float = TTL_S

    @property
    def path(self) -> str:
        return self.output.join(LEASE_NAME)

    def _body(self, started: float) -> bytes:
        now = _now()
        return json.dumps({"owner": self.owner, "run_id": self.run_id, "started": _iso(started),
                           "renewed": _iso(now), "expires_unix": now + self.ttl_s}).encode()

    def _read(self) -> dict | None:
        fs = self.output.filesystem()
        try:
            return json.loads(read_bytes(fs, self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable or half-written: treat as a stale lease
            return {"owner": "unknown", "run_id": "", "expires_unix": 0}

    def acquire(self, take_over: bool = False, settle_s: float = SETTLE_S) -> None:
        """Takes the lease, or raises LeaseHeld naming the holder and when its lease expires."""
        held = self._read()
        if held is not None and held.get("run_id") != self.run_id and held.get("expires_unix", 0) > _now() and not take_over:
            raise LeaseHeld(f"{self.output.uri} is being written by {held.get('owner')} (run {held.get('run_id')}, "
                            f"since {held.get('started')}); its lease expires at {_iso(held['expires_unix'])} unless "
                            "renewed. Wait for it, or pass --take-over-lease if that driver is gone")
        self._started = _now()
        write_bytes(self.output.filesystem(), self.path, self._body(self._started), "application/json")
        time.sleep(settle_s)
        now_held = self._read()
        if now_held is None or now_held.get("run_id") != self.run_id:
            owner = (now_held or {}).get("owner", "another driver")
            raise LeaseHeld(f"{self.output.uri}: {owner} took the lease while this driver was taking it")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="ugc-crop-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                held = self._read()
                if held is not None and held.get("run_id") != self.run_id:
                    return  # taken over (--take-over-lease): the other driver's now; the check will tell
                write_bytes(self.output.filesystem(), self.path, self._body(self._started), "application/json")
            except Exception:  # a store hiccup: the next renewal tries again, well within the TTL
                pass

    def release(self) -> None:
        """Stops renewing and deletes the lease if it is still this driver's."""
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        held = self._read()
        if held is not None and held.get("run_id") == self.run_id:
            try:
                self.output.filesystem().delete_file(self.path)
            except OSError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
