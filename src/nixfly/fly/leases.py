"""The leases one deploy holds on an app's machines.

:class:`Leases` leases every machine a deploy will touch before it touches any (all at once: each is one
request), keeps them alive from a background thread, and releases them on every exit path. Each lease
names its holder (:class:`~nixfly.fly.state.Holder`: pid, host, process start) in its description and is
recorded on disk (:class:`~nixfly.fly.state.LeaseStore`): a lease whose holder is a nixfly process of this
host that is gone (killed) is taken over; one without a holder's name that runs out soon (a create's) is
waited out; one whose holder runs, or that someone else holds, stops the deploy with nothing changed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from nixfly.errors import DeployError
from nixfly.fly.api import FlyAPIError, Lease, LeaseConflict, MachinesAPI, NotFound
from nixfly.fly.state import Holder, LeaseStore


def parallel(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 8) -> None:
    """Run ``fn`` on every item on a few threads (independent API requests); the first error is raised
    once all have finished."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


@dataclass(eq=False)  # one per deploy: compared by identity
class Leases:
    """The leases of one deploy of ``app``: machine id → nonce, mirrored in ``store``."""

    api: MachinesAPI
    app: str
    store: LeaseStore
    _: KW_ONLY
    holder: Holder
    ttl: int
    progress: Callable[[str], None]
    _held: dict[str, str] = field(default_factory=dict, init=False)  # machine id -> nonce
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _refresher: threading.Thread | None = field(default=None, init=False)

    def lease(self, machine_id: str) -> str:
        """Lease a machine. A lease held by a nixfly process of this host that is gone (killed) is taken
        over; a lease without a holder's name that runs out soon is waited out; any other holder stops the
        deploy. Our own lease whose grant was lost is recognised by the API client (its description names
        this run)."""
        desc = self.holder.describe()
        try:
            lease = self._acquire(machine_id, desc)
        except LeaseConflict as conflict:
            held = conflict.held  # the API client read it already
            lease = self._lease_held(machine_id, held, desc) if held is not None else self._acquire(machine_id, desc)
        self.hold(machine_id, lease.nonce)
        return lease.nonce

    def _acquire(self, machine_id: str, desc: str) -> Lease:
        return self.api.acquire_lease(self.app, machine_id, ttl=self.ttl, description=desc)

    def _lease_held(self, machine_id: str, held: Lease, desc: str) -> Lease:
        holder = Holder.parse(held.description)
        if holder is None:
            # A lease without a holder's name: one a create took (lease_ttl). If this host's store says a
            # nixfly run that is gone got it, it is taken over; else, when it runs out soon, wait for it.
            holder = self.store.holder_of(machine_id, held.nonce)
            if (holder is None or not holder.gone()) and held.expires_at and \
                    0 < held.expires_at - time.time() <= self.ttl + 1:  # fmt: skip
                return self._wait_out(machine_id, held.expires_at, desc)
        if holder is None or not holder.gone():
            who = f"by {holder.where()}" if holder else (f"by {held.owner}" if held.owner else "by someone else")
            until = (f" until {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(held.expires_at))}"
                     if held.expires_at else "")  # fmt: skip
            raise DeployError(
                f"machine {machine_id} of app {self.app} is leased {who}{until}; nothing was changed "
                "(wait for the other operation to finish, or for the lease to expire)"
            )
        self.progress(f"taking over the lease on {machine_id} left by {holder.where()}, which is gone")
        with contextlib.suppress(NotFound):
            self.api.release_lease(self.app, machine_id, nonce=held.nonce)
        return self._acquire(machine_id, desc)

    def _wait_out(self, machine_id: str, expires_at: float, desc: str) -> Lease:
        """Acquire the lease once the one held has run out (expires_at is whole seconds: the lease may
        outlive it by up to one)."""
        self.progress(f"machine {machine_id} is leased by a run that did not say who it is; waiting "
                      f"{expires_at - time.time():.0f}s for the lease to run out")  # fmt: skip
        give_up = expires_at + 3.0
        time.sleep(max(0.0, expires_at - time.time()) + 0.2)
        while True:
            try:
                return self._acquire(machine_id, desc)
            except LeaseConflict:
                if time.time() >= give_up:
                    raise
                time.sleep(0.3)

    def hold(self, machine_id: str, nonce: str) -> None:
        """Count a lease this deploy got (from a grant, or from a create that leased its machine)."""
        with self._lock:
            self._held[machine_id] = nonce
        self.store.put(machine_id, nonce, self.holder.describe())

    def nonce(self, machine_id: str) -> str:
        """The nonce of this deploy's lease on the machine, leasing it first when not held."""
        with self._lock:
            nonce = self._held.get(machine_id)
        return nonce if nonce is not None else self.lease(machine_id)

    def forget(self, machine_id: str) -> None:
        """The machine is gone (destroyed): its lease with it."""
        with self._lock:
            self._held.pop(machine_id, None)
        self.store.drop(machine_id)

    def _refresh_loop(self) -> None:
        interval = max(0.5, self.ttl / 3)
        while not self._stop.wait(interval):
            with self._lock:
                held = dict(self._held)
            for mid, nonce in held.items():
                with contextlib.suppress(FlyAPIError):
                    lease = self.api.refresh_lease(self.app, mid, nonce=nonce, ttl=self.ttl)
                    # A refresh that came after the lease ran out (a starved process) is granted as a new
                    # lease with a new nonce: hold that one, or every later change is refused as not ours.
                    if lease.nonce and lease.nonce != nonce:
                        self._adopt(mid, nonce, lease.nonce)

    def _adopt(self, machine_id: str, old: str, new: str) -> None:
        """Hold ``new`` in place of ``old``, in one step with the check that ``old`` is still held and the
        deploy goes on; else (the machine was forgotten, or the leases are being released while this
        refresh was on its way) give the new lease back at once rather than leave it to run out."""
        with self._lock:
            adopt = self._held.get(machine_id) == old and not self._stop.is_set()
            if adopt:
                self._held[machine_id] = new
        if adopt:
            self.store.put(machine_id, new, self.holder.describe())
            return
        with contextlib.suppress(FlyAPIError):
            self.api.release_lease(self.app, machine_id, nonce=new)

    def _release_all(self) -> None:
        with self._lock:
            held = dict(self._held)

        def release(item: tuple[str, str]) -> None:
            mid, nonce = item
            try:
                self.api.release_lease(self.app, mid, nonce=nonce)
            except FlyAPIError:
                return  # stays in the store; the next run recovers it
            self.forget(mid)

        parallel(release, list(held.items()))

    @contextlib.contextmanager
    def held(self, machine_ids: Iterable[str]) -> Iterator[None]:
        """Lease ``machine_ids`` and keep every lease held alive until the block ends; then release them
        all. Any refused lease stops the deploy before anything changed."""
        try:
            # The refresher runs before the first grant: waiting out one machine's lease may take longer than
            # the leases already granted last (it refreshes whatever is held at each round).
            self._refresher = threading.Thread(target=self._refresh_loop, name="lease-refresh", daemon=True)
            self._refresher.start()
            parallel(self.lease, sorted(machine_ids))
            yield
        finally:
            self._stop.set()
            if self._refresher is not None:
                self._refresher.join(timeout=5)
            self._release_all()
