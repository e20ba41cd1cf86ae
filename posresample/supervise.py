"""`worker --devices 0,1,2,3`: one worker process per device, restarted (bounded) when one dies.

Each child is the same `worker` command with one device; CUDA children see only their own GPU
(CUDA_VISIBLE_DEVICES). Ctrl-C / SIGTERM is passed on to every child, which finishes or releases
its batch; a second signal kills them at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)


def parse_devices(spec: str) -> list[str]:
    """'0,1' -> cuda ids; 'all' -> every visible GPU; 'cpu,cpu' -> CPU workers (for tests)."""
    if spec == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            from .errors import ModelError

            raise ModelError("--devices all: no CUDA device is visible")
        return [str(i) for i in range(count)]
    return [d.strip() for d in spec.split(",") if d.strip()]


@dataclass
class Child:
    device: str
    proc: subprocess.Popen
    restarts: int = 0


class Supervisor:
    def __init__(self, worker_args: list[str], devices: list[str], max_restarts: int = 3):
        self.worker_args = worker_args  # the worker command line without --device/--devices
        self.devices = devices
        self.max_restarts = max_restarts
        self.stopping = False

    def _spawn(self, device: str) -> subprocess.Popen:
        env = dict(os.environ)
        args = [sys.executable, "-m", "posresample.cli", *self.worker_args]
        if device.isdigit():
            env["CUDA_VISIBLE_DEVICES"] = device
            args += ["--device", "cuda:0"]
        else:
            args += ["--device", device]
        # Own session: a terminal Ctrl-C reaches only the supervisor, which forwards one SIGTERM.
        return subprocess.Popen(args, env=env, start_new_session=True)

    def run(self) -> int:
        children = [Child(d, self._spawn(d)) for d in self.devices]
        log.info("started %d worker process(es): %s", len(children), ", ".join(f"{c.device} (pid {c.proc.pid})" for c in children))
        self._install_signals(children)
        failed = 0
        while children:
            pid, status = os.wait()
            child = next((c for c in children if c.proc.pid == pid), None)
            if child is None:
                continue
            child.proc.returncode = os.waitstatus_to_exitcode(status)
            code = child.proc.returncode
            if code == 0 or self.stopping:
                children.remove(child)
                continue
            log.warning("worker on %s (pid %d) died with %s", child.device, pid, _describe(code))
            if child.restarts >= self.max_restarts:
                log.error("worker on %s died %d times: not restarting it", child.device, child.restarts + 1)
                children.remove(child)
                failed += 1
                continue
            child.restarts += 1
            child.proc = self._spawn(child.device)
            log.info("restarted worker on %s (pid %d), restart %d of %d", child.device, child.proc.pid, child.restarts, self.max_restarts)
        return 1 if failed else 0

    def _install_signals(self, children: list[Child]) -> None:
        def handle(signum, _frame):
            sig = signal.SIGKILL if self.stopping else signal.SIGTERM
            self.stopping = True
            log.warning("%s: %s all workers", signal.Signals(signum).name, "killing" if sig == signal.SIGKILL else "stopping")
            for c in children:
                if c.proc.poll() is None:
                    c.proc.send_signal(sig)

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
