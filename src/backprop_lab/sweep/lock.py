"""One sweep at a time per experiment: `hold(client, uri, experiment_id, name) -> Held` or `SweepBusy`.

A second sweep that would write into an experiment while another sweep on it is alive would
duplicate its runs or leave runs without a parent; it is refused with one line instead.

- SQLite store: an OS lock (`fcntl.flock`) on a file beside the database,
  `<db>.sweep-<experiment id>.lock`. The kernel drops it when the holder dies, even by SIGKILL, so
  re-running a killed sweep is never refused. The holder deletes the file when it lets go (while
  still holding the lock); a taker checks after `flock` that the path still names the file it
  locked, and starts again when it does not, so a sweep never holds a lock on a deleted file
  while another one locks the new file. Only a SIGKILL leaves the file behind (the next sweep
  reuses it).
- The same file reserves RESERVE_BYTES on the store's disk (written, so they are allocated) for
  the whole sweep: on a disk that fills mid-sweep, `Held.free_reserve()` truncates it (the lock
  stays) so the sweep can still end its parent and children. A disk without that much room
  refuses the sweep up front (`StoreFull`, one line).
- Tracking server: a lease, the experiment tag `bpl.sweep_lease` = `<token> <expiry unix s> <who>`,
  renewed by a heartbeat thread every LEASE_S / 3 and deleted at the end. A sweep takes a free or
  expired lease, then reads it back after SETTLE_S: two sweeps that both saw it free both wrote,
  and only the one whose token stayed (the last write) goes on. A sweep killed by SIGKILL blocks
  the experiment until its lease expires (LEASE_S).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backprop_lab.config.schema import UserError

LEASE_TAG = "bpl.sweep_lease"
LEASE_S = 60.0
SETTLE_S = 1.0
# Room to end a sweep on a full disk: its last writes mark the parent and the children still
# RUNNING ended, a few SQLite WAL frames (4 KiB pages) each; measured ~0.2 MiB for 20 runs.
RESERVE_BYTES = 1 << 20


class SweepBusy(UserError):
    """Another sweep is writing into the experiment; `str()` is one line."""


class StoreFull(UserError):
    """No room beside the SQLite store for the sweep's reserve; `str()` is one line."""


class Held:
    """What `hold` yields: `free_reserve()` gives the reserved disk space back (idempotent)."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd

    def free_reserve(self) -> bool:
        """Truncate the lock file to its one line; True when there was a reserve to free."""
        if self._fd is None:
            return False
        try:
            size = os.fstat(self._fd).st_size
            line_end = os.pread(self._fd, 200, 0).find(b"\n")
            os.ftruncate(self._fd, line_end + 1 if line_end >= 0 else 0)
        except OSError:
            return False
        return size > RESERVE_BYTES // 2


@contextlib.contextmanager
def hold(client: Any, uri: str, experiment_id: str, experiment_name: str) -> Iterator[Held]:
    """Hold the experiment for this sweep for the duration of the `with` block."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        with _file_lock(db.with_name(f"{db.name}.sweep-{experiment_id}.lock"), experiment_name) as held:
            yield held
    else:
        with _lease(client, experiment_id, experiment_name):
            yield Held()


def _who() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def _file_lock(path: Path, experiment_name: str) -> Iterator[Held]:
    fd = _take(path, experiment_name)
    try:
        line = f"{_who()}, since {time.strftime('%H:%M:%S')}\n".encode()
        os.ftruncate(fd, 0)
        try:
            written = os.pwrite(fd, line + bytes(RESERVE_BYTES), 0)  # zeros, really allocated
            why = None if written == len(line) + RESERVE_BYTES else f"only {written} bytes written"
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why is not None:
            raise StoreFull(f"sweep: no room for the sweep's {RESERVE_BYTES >> 20} MiB reserve beside the "
                            f"store in {path.parent} ({why}); free some space on that disk or point "
                            "tracking.uri elsewhere")
        yield Held(fd)
    finally:
        # Deleted while still locked: a sweep that opened it meanwhile finds it gone and retries.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the lock (workers forked meanwhile hold a copy until they exit)


def _take(path: Path, experiment_name: str) -> int:
    """Open and lock `path`; the fd, once the locked file is still the one at `path`."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split("\n")[0].strip() or "another process"
            os.close(fd)
            raise SweepBusy(_busy(experiment_name, holder, f"lock file {path}")) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder deleted it as we opened it: lock the new file


@contextlib.contextmanager
def _lease(client: Any, experiment_id: str, experiment_name: str) -> Iterator[None]:
    token = uuid.uuid4().hex

    def write() -> None:
        client.set_experiment_tag(experiment_id, LEASE_TAG, f"{token} {time.time() + LEASE_S:.0f} {_who()}")

    def holder() -> tuple[str, float, str] | None:
        tag = client.get_experiment(experiment_id).tags.get(LEASE_TAG, "")
        parts = tag.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or float(parts[1]) < time.time():
            return None  # free, or expired
        return parts[0], float(parts[1]), parts[2] if len(parts) > 2 else "?"

    current = holder()
    if current is not None and current[0] != token:
        raise SweepBusy(_busy(experiment_name, current[2], f"lease tag {LEASE_TAG}, expires in "
                              f"{current[1] - time.time():.0f} s"))
    try:
        write()
    except Exception as exc:
        # Two sweeps inserting the tag at the same instant: the store's unique key on
        # (experiment, tag) lets one in and fails the other, which is exactly "busy".
        if "unique" not in str(exc).lower() and "already exists" not in str(exc).lower():
            raise
        raise SweepBusy(_busy(experiment_name, "another sweep", f"lease tag {LEASE_TAG}")) from None
    time.sleep(SETTLE_S)  # a sweep that read "free" together with us has written by now
    current = holder()
    if current is None or current[0] != token:
        raise SweepBusy(_busy(experiment_name, current[2] if current else "another sweep",
                              f"lease tag {LEASE_TAG}"))
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LEASE_S / 3):
            with contextlib.suppress(Exception):  # a missed beat: the next one renews
                write()

    beat = threading.Thread(target=heartbeat, name="bpl-sweep-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(Exception):  # expires by itself otherwise
            client.delete_experiment_tag(experiment_id, LEASE_TAG)


def _busy(experiment_name: str, holder: str, how: str) -> str:
    return (f"sweep: another sweep is writing into experiment {experiment_name!r} ({holder}; {how}); "
            "wait until it ends, or use another experiment_name")
