"""A daemon thread that calls a renewal function every `interval` seconds until stopped."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Heartbeat:
    """`with Heartbeat(renew, interval):` renews a lease in the background while the block runs.

    A failed renewal is logged and retried at the next beat: the lease has slack (3 beats) and the
    guarded writes discard work whose lease was lost anyway.
    """

    def __init__(self, renew, interval: float, name: str = "heartbeat"):
        self.renew, self.interval = renew, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:  # a database hiccup must not kill the heartbeat
                log.warning("%s failed", self._thread.name, exc_info=log.isEnabledFor(logging.DEBUG))

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
