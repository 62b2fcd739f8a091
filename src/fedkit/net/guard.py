"""Connection-exhaustion guards: per-peer limits on unauthenticated streams and stream deadlines.

gRPC's synchronous server holds one thread per active call. A client-streaming ``PushResult``
whose first message never comes would hold its thread forever, and a few dozen of them fill the
server's call limit so that honest workers are refused. Two guards, both in the servicer:

* **Pending streams per peer.** A stream is *pending* until its first message (which carries the
  worker's token) has arrived. One peer — its certificate identity under mutual TLS, otherwise its
  IP address — may hold at most ``max_pending`` pending streams, and the whole server at most
  ``max_pending_total``. A new stream over a limit is not refused: the *oldest* pending stream of
  that peer (over the total: of the peer holding the most) is cancelled to make room. An honest
  stream is pending for the milliseconds its first message takes, so a peer holding idle streams
  only evicts its own, and an honest worker on the same host (loopback) is still admitted.
* **Deadlines.** Every watched call has an expiry: ``idle_s`` after its last message (the first
  message too), and never later than a hard limit the broker sets (a result stream ends at its
  round's deadline). One watchdog thread cancels expired calls; the handler's blocked read then
  raises and its thread is free. A stream trickling one chunk every 2 s is cut at the deadline.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Cancellable(Protocol):
    """What the watchdog needs of a call (``grpc.ServicerContext`` has it)."""

    def cancel(self) -> None:
        """End the call."""
        ...


class Watch:
    """One watched call: refresh on every message, tighten to a hard limit, end when done."""

    def __init__(
        self, guard: StreamGuard, call: Cancellable, idle_s: float, peer: str | None
    ) -> None:
        self._guard = guard
        self.call = call
        self.idle_s = idle_s
        self.peer = peer
        """The peer while the stream is pending (no message yet), else None."""
        self.opened = time.monotonic()
        self.hard: float = float("inf")
        self.expiry = self.opened + idle_s
        self.cut = False

    def touch(self) -> None:
        """A message arrived: the call may stay idle ``idle_s`` more (never past the limit);
        a pending stream is pending no more."""
        self.expiry = min(time.monotonic() + self.idle_s, self.hard)
        self.peer = None

    def limit(self, at: float) -> None:
        """The call must end by monotonic time ``at`` (e.g. the round's deadline)."""
        self.hard = min(self.hard, at)
        self.expiry = min(self.expiry, self.hard)

    def done(self) -> None:
        """The call ended: stop watching it."""
        self._guard._forget(self)


class StreamGuard:
    """Pending-stream limits and a watchdog (see module docstring).

    Args:
        max_pending: Pending streams one peer may hold.
        max_pending_total: Pending streams all peers together may hold.
        idle_s: Longest silence allowed on a watched call.
        tick_s: How often the watchdog looks for expired calls.
    """

    def __init__(
        self,
        *,
        max_pending: int = 4,
        max_pending_total: int = 32,
        idle_s: float = 10.0,
        tick_s: float = 0.1,
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_total = max_pending_total
        self.idle_s = idle_s
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cut = 0
        """Calls cancelled by the watchdog (for logs and tests)."""
        self.evicted = 0
        """Pending streams cancelled to make room for newer ones (for logs and tests)."""

    def pending(self, peer: str | None = None) -> int:
        """Pending streams now (of ``peer``, or of everyone)."""
        with self._lock:
            return sum(1 for w in self._watches if w.peer is not None and peer in (None, w.peer))

    def watch(self, call: Cancellable, *, pending_peer: str | None = None) -> Watch:
        """Start watching ``call`` (expires ``idle_s`` from now unless touched).

        With ``pending_peer`` the call is a pending stream of that peer until its first
        :meth:`Watch.touch`; over a limit, an older pending stream is evicted (module docstring).
        """
        w = Watch(self, call, self.idle_s, pending_peer)
        evict: list[Watch] = []
        with self._lock:
            if pending_peer is not None:
                evict = self._make_room(pending_peer)
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fedkit-stream-watchdog", daemon=True
                )
                self._thread.start()
        for old in evict:
            old.call.cancel()
        return w

    def _make_room(self, peer: str) -> list[Watch]:
        """Pending streams to cancel before one more of ``peer`` is admitted (under the lock)."""
        by_peer: dict[str, list[Watch]] = {}
        for w in self._watches:
            if w.peer is not None:
                by_peer.setdefault(w.peer, []).append(w)
        victims: list[Watch] = []
        mine = by_peer.get(peer, [])
        if len(mine) >= self.max_pending:
            victims.append(min(mine, key=lambda w: w.opened))
        elif sum(len(v) for v in by_peer.values()) >= self.max_pending_total:
            greedy = max(by_peer.values(), key=len)
            victims.append(min(greedy, key=lambda w: w.opened))
        for v in victims:
            self._watches.discard(v)
            v.cut = True
        self.evicted += len(victims)
        return victims

    def _forget(self, w: Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            now = time.monotonic()
            with self._lock:
                expired = [w for w in self._watches if w.expiry <= now]
                for w in expired:
                    self._watches.discard(w)
                    w.cut = True
                self.cut += len(expired)
            for w in expired:
                w.call.cancel()

    def close(self) -> None:
        """Stop the watchdog."""
        self._stop.set()
