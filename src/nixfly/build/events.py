"""What a build tells its listeners, as one small protocol instead of a callback per event.

``build_image(spec, events=…)`` reports the layer plan, each layer as it starts, writes tar bytes, grows its
compressed blob and is done, the binary-cache download plan and bytes, and notes. A listener subclasses
:class:`BuildListener` (every method a no-op) and overrides what it listens to; :class:`Tee` hands every
event to several listeners in order (progress bars and the early uploads of a push, say).

Two events cost something to produce, so the build asks first (:meth:`BuildEvents.listens`): a per-chunk
byte count (``layer_bytes``, ``fetch_bytes``) and a growing blob (``layer_blob``: the layer is then written
through a :class:`~nixfly.image.growing.GrowingBlob` that its one listener owns and reads while it grows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from nixfly.build.layers import BuiltLayer, LayerSpec
    from nixfly.image.growing import GrowingBlob

# The events a build produces only when some listener wants them.
CostlyEvent = Literal["layer_bytes", "layer_blob", "fetch_bytes"]


class BuildEvents(Protocol):
    def planned(self, specs: Sequence[LayerSpec], weights: Sequence[int]) -> None:
        """The layer plan: one spec per layer, and each layer's weight (bytes to write, roughly)."""

    def layer_started(self, i: int) -> None:
        """Layer ``i`` is being built (it was in neither the local cache nor the destination)."""

    def layer_bytes(self, i: int, n: int) -> None:
        """Layer ``i`` wrote ``n`` more uncompressed tar bytes."""

    def layer_blob(self, i: int, blob: GrowingBlob) -> None:
        """Layer ``i``'s compressed blob, as it grows (the listener owns the handle)."""

    def layer_done(self, i: int, built: BuiltLayer) -> None:
        """Layer ``i`` is ready: built now, found in the cache, or known to be in the destination."""

    def fetch_planned(self, total_bytes: int) -> None:
        """``total_bytes`` more are to be downloaded from binary caches."""

    def fetch_bytes(self, n: int) -> None:
        """``n`` more bytes were downloaded from a binary cache."""

    def note(self, text: str) -> None:
        """Something the user should know that is not an error."""

    def listens(self, event: CostlyEvent) -> bool:
        """Whether the build should produce ``event`` at all."""


class BuildListener:
    """A :class:`BuildEvents` that ignores everything: subclass it and override what you listen to."""

    def planned(self, specs: Sequence[LayerSpec], weights: Sequence[int]) -> None:
        pass

    def layer_started(self, i: int) -> None:
        pass

    def layer_bytes(self, i: int, n: int) -> None:
        pass

    def layer_blob(self, i: int, blob: GrowingBlob) -> None:
        pass

    def layer_done(self, i: int, built: BuiltLayer) -> None:
        pass

    def fetch_planned(self, total_bytes: int) -> None:
        pass

    def fetch_bytes(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def listens(self, event: CostlyEvent) -> bool:
        """True when a subclass overrides the event's method."""
        return getattr(type(self), event) is not getattr(BuildListener, event)


NO_EVENTS: BuildEvents = BuildListener()


class Tee(BuildListener):
    """Every event to each listener, in the order given."""

    def __init__(self, *listeners: BuildEvents) -> None:
        self.listeners = tuple(listeners)

    def planned(self, specs: Sequence[LayerSpec], weights: Sequence[int]) -> None:
        for x in self.listeners:
            x.planned(specs, weights)

    def layer_started(self, i: int) -> None:
        for x in self.listeners:
            x.layer_started(i)

    def layer_bytes(self, i: int, n: int) -> None:
        for x in self.listeners:
            x.layer_bytes(i, n)

    def layer_blob(self, i: int, blob: GrowingBlob) -> None:
        for x in self.listeners:
            x.layer_blob(i, blob)

    def layer_done(self, i: int, built: BuiltLayer) -> None:
        for x in self.listeners:
            x.layer_done(i, built)

    def fetch_planned(self, total_bytes: int) -> None:
        for x in self.listeners:
            x.fetch_planned(total_bytes)

    def fetch_bytes(self, n: int) -> None:
        for x in self.listeners:
            x.fetch_bytes(n)

    def note(self, text: str) -> None:
        for x in self.listeners:
            x.note(text)

    def listens(self, event: CostlyEvent) -> bool:
        return any(x.listens(event) for x in self.listeners)


class Notes(BuildListener):
    """Notes to a function (``note: …`` on stderr, say); every other event ignored."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say

    def note(self, text: str) -> None:
        self._say(text)
