"""`worker --devices 0,1,2,3`: one worker process per device, restarted (bounded) when one dies.

Each child is the same `worker` command with one device; CUDA children see only their own GPU
(CUDA_VISIBLE_DEVICES). Ctrl-C / SIGTERM is passed on to every child, which finishes or releases
its batch; a second signal kills them at once. A child that dies is restarted after a back-off
that doubles with each quick death (so a broken database or model does not burn the restart
budget in seconds). Children get SIGTERM when the supervisor dies, however it dies (Linux
PR_SET_PDEATHSIG), so none runs on orphaned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
RESTART_FIRST_DELAY = 1.0  # seconds before restarting a dead worker; doubles per restart, up to
RESTART_MAX_DELAY = 60.0
STABLE_SECONDS = 120.0  # a worker that ran this long before dying starts the back-off afresh
POLL_SECONDS = 0.2  # how often the supervisor reaps children while a restart is pending
PR_SET_PDEATHSIG = 1


def parse_devices(spec: str) -> list[str]:
    """'0,1' -> cuda ids; 'all' -> every visible GPU; 'cpu,cpu' -> CPU workers (for tests).

    Checked before any process starts: a name that is neither a GPU index nor cpu, a GPU index
    given twice or one that is not visible is one line, not children that die and restart."""
    import torch

    from .errors import ModelError

    count = torch.cuda.device_count()
    if spec == "all":
        if count == 0:
            raise ModelError("--devices all: no CUDA device is visible")
        return [str(i) for i in range(count)]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices:
        raise ModelError(f"--devices {spec!r}: name GPU indexes (0,1), all, or cpu")
    for device in devices:
        if device != "cpu" and not device.isdigit():
            raise ModelError(f"--devices: {device!r} is neither a GPU index (0, 1, ...) nor cpu")
        if device.isdigit() and int(device) >= count:
            raise ModelError(f"--devices: GPU {device} is not visible ({count} CUDA device(s))")
    gpus = [d for d in devices if d.isdigit()]
    if len(set(map(int, gpus))) != len(gpus):
        raise ModelError(f"--devices {spec!r} names a GPU twice: one worker per GPU")
    return devices


@dataclass
class Child:
    device: str
    proc: subprocess.Popen | None
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # when a pending restart is due


def die_with_parent(parent_pid: int) -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux); exit if it already has."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and sys.platform.startswith("linux"):
        ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def restart_delay(restarts: int) -> float:
    return min(RESTART_FIRST_DELAY * 2 ** (restarts - 1), RESTART_MAX_DELAY)


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
        parent = os.getpid()
        return subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=lambda: die_with_parent(parent))

    def run(self) -> int:
        children = [Child(d, self._spawn(d)) for d in self.devices]
        log.info(
            "started %d worker process(es): %s",
            len(children),
            ", ".join(f"{c.device} (pid {c.proc.pid})" for c in children),
        )
        self._install_signals(children)
        failed = 0
        while children:
            self._restart_due(children)
            child, code = self._reap(children)
            if child is None:
                continue
            if code == 0 or self.stopping:
                children.remove(child)
                continue
            log.warning("worker on %s (pid %d) died with %s", child.device, child.proc.pid, _describe(code))
            if time.monotonic() - child.started >= STABLE_SECONDS:
                child.restarts = 0  # it ran well for a while: a fresh death, a fresh back-off
            if child.restarts >= self.max_restarts:
                log.error("worker on %s died %d times: not restarting it", child.device, child.restarts + 1)
                children.remove(child)
                failed += 1
                continue
            child.restarts += 1
            child.proc, child.restart_at = None, time.monotonic() + restart_delay(child.restarts)
            log.info(
                "restarting worker on %s in %.0fs (restart %d of %d)",
                child.device,
                restart_delay(child.restarts),
                child.restarts,
                self.max_restarts,
            )
        return 1 if failed else 0

    def _reap(self, children: list[Child]) -> tuple[Child | None, int | None]:
        """Wait for a child to exit: blocking when no restart is pending, else polling until one is due."""
        reaped = next((c for c in children if c.proc is not None and c.proc.returncode is not None), None)
        if reaped is not None:  # Popen.poll() in the signal handler reaped it already
            return reaped, reaped.proc.returncode
        pending = any(c.proc is None for c in children)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG if pending else 0)
        except ChildProcessError:  # nothing running: only pending restarts
            pid, status = 0, 0
        if pid == 0:
            time.sleep(POLL_SECONDS)  # a restart is pending: look again shortly
            return None, None
        child = next((c for c in children if c.proc is not None and c.proc.pid == pid), None)
        if child is None:
            return None, None
        child.proc.returncode = os.waitstatus_to_exitcode(status)
        return child, child.proc.returncode

    def _restart_due(self, children: list[Child]) -> None:
        for child in list(children):
            if child.proc is None and (self.stopping or time.monotonic() >= child.restart_at):
                if self.stopping:
                    children.remove(child)
                    continue
                child.proc, child.restart_at, child.started = self._spawn(child.device), None, time.monotonic()
                log.info("restarted worker on %s (pid %d)", child.device, child.proc.pid)

    def _install_signals(self, children: list[Child]) -> None:
        def handle(signum, _frame):
            sig = signal.SIGKILL if self.stopping else signal.SIGTERM
            self.stopping = True
            log.warning(
                "%s: %s all workers", signal.Signals(signum).name, "killing" if sig == signal.SIGKILL else "stopping"
            )
            for c in children:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.send_signal(sig)

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def supervise_workers(argv: list[str], devices: str, max_restarts: int, max_jobs: int | None, verbose: bool) -> int:
    """`worker --devices`: the same worker command (`argv` from `worker` on) once per device. Under
    --max-jobs they share one budget file, so N is N in all."""
    import tempfile

    argv = _argv_without(argv, ("--devices", "--device", "--max-restarts"))
    argv = ["-v", *argv] if verbose else argv
    if max_jobs is None:
        return Supervisor(argv, parse_devices(devices), max_restarts).run()
    fd, path = tempfile.mkstemp(prefix="posresample-budget-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(str(max_jobs))
        return Supervisor([*argv, "--jobs-budget", path], parse_devices(devices), max_restarts).run()
    finally:
        os.unlink(path)


def _argv_without(argv: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(n + "=") for n in names):
            continue
        out.append(arg)
    return out
