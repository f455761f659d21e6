"""Running under torchrun: the process group (join, exchange, agree, close) and, when a worker
is lost, the one line that says which and why.

    torchrun --nproc_per_node=8 main.py --runs 200 --json out.json

Which process runs which run is hlb.bench.runs.TorchrunScheduler's; this module only lets the
processes meet and talk. Results travel as JSON text in uint8 tensors, never as pickles, and
always over gloo, on the CPU, whatever the device: they are a few kilobytes a round, gloo's
timeout raises an error here (where NCCL's watchdog would end the process), gloo exists on
Windows (NCCL does not), and nothing of the process group runs on a GPU beside a captured step.
Without torchrun (none of WORLD_SIZE, RANK and LOCAL_RANK in the environment) `joined` yields
None and nothing here runs.
"""

import dataclasses
import json
import os
import signal
import socket
import time
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from hlb.errors import AlreadyReported, HlbError, UsageError

TIMEOUT_ENV = "HLB_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300      # how long a rank waits for the others in one collective
_POLL_S = 0.01               # collectives are polled so that signals land while waiting
_ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class Terminated(BaseException):
    """SIGTERM, as torchrun's agent sends to the remaining workers once one has failed.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""


class _Lost(Exception):
    """A collective failed: another rank died, hung past the timeout, or the network broke."""


@dataclasses.dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def leader(self):
        return self.rank == 0


def world_from_env(environ=None):
    """The World torchrun describes in the environment, or None when not under torchrun."""
    environ = os.environ if environ is None else environ
    if not any(key in environ for key in _ENV_KEYS):
        return None
    try:
        size, rank, local_rank = (int(environ[key]) for key in _ENV_KEYS)
    except (KeyError, ValueError):
        found = ", ".join(f"{k}={environ.get(k)}" for k in _ENV_KEYS)
        raise UsageError(f"torchrun sets WORLD_SIZE, RANK and LOCAL_RANK, but found {found}; "
                         "run under torchrun or unset them") from None
    if not 0 <= rank < size or local_rank < 0:
        raise UsageError(f"RANK {rank} does not fit WORLD_SIZE {size} (or LOCAL_RANK "
                         f"{local_rank} is negative); run under torchrun or unset them")
    return World(rank, size, local_rank)


def timeout_s(environ=None):
    environ = os.environ if environ is None else environ
    text = environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"{TIMEOUT_ENV}={text}: expected a positive number of seconds")
    return value


@contextmanager
def joined(device, share_gpus=False):
    """Join torchrun's process group for `device` ("cuda", "mps" or "cpu"); yield a Group;
    yield None when not under torchrun. `share_gpus`: more processes than GPUs may run, each
    on GPU local_rank % count (see `placement`). A SIGTERM or a broken collective that escapes
    the block becomes a one-line HlbError (on rank 0) naming the rank that stopped, if it can."""
    world = world_from_env()
    if world is None:
        yield None
        return
    group = Group(world, device, timeout_s(), share_gpus)
    try:
        group.start()
        yield group
    except (Terminated, _Lost) as e:
        raise group.lost(e, "before the runs") from None
    finally:
        group.close()


def _alive(pid):
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not). Where that
    cannot be told (Windows) it counts as running: the line then says "rank unknown"."""
    if os.name == "nt":
        return True                 # os.kill(pid, 0) would send it Ctrl-C (CTRL_C_EVENT is 0)
    if not os.path.isdir("/proc/self"):     # no /proc (macOS): ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:             # it exists, but is another user's
            return True
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The state follows the command name, which is in parentheses and may hold spaces.
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _short(e):
    """The first sentence of a collective's error, without gloo's source location."""
    text = " ".join(str(e).split())
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].rstrip(".") or type(e).__name__


def placement(local_rank, device, share_gpus, gpus):
    """This process's device: GPU local_rank, or local_rank % gpus when processes share GPUs
    (accuracy mode); "mps" and "cpu" as they are."""
    if device != "cuda":
        return device
    if share_gpus:
        return f"cuda:{local_rank % gpus}"
    if local_rank >= gpus:
        # Not a UsageError: rank 0 may not share it, so this rank says it itself.
        raise HlbError(f"LOCAL_RANK {local_rank} but only {gpus} GPU(s) are visible here; "
                       "start at most that many processes per machine (--nproc_per_node), "
                       "or share them with --accuracy-only", 2)
    return f"cuda:{local_rank}"


class Group:
    """This process's place among torchrun's workers: its rank, device and process group."""

    def __init__(self, world, device, timeout, share_gpus=False):
        self.world = world
        self.timeout = timeout
        self.stopping = False        # set once the run is ending; later SIGTERMs are ignored
        self.peers = []              # every rank's host, pid and GPU, once started
        self._old_sigterm = None
        gpus = torch.cuda.device_count() if device == "cuda" else 0
        self.device = placement(world.local_rank, device, share_gpus, gpus)
        self.backend = "gloo"        # whatever the device: see the module's docstring

    def start(self):
        """Take over SIGTERM, join the process group, and meet the other ranks."""
        self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(self.device)
        try:
            dist.init_process_group(self.backend, timeout=timedelta(seconds=self.timeout))
        except (RuntimeError, ValueError) as e:
            raise HlbError(f"could not join the other workers ({_short(e)}); start this "
                           "with torchrun, which sets MASTER_ADDR and MASTER_PORT") from None
        self.peers = self.exchange({"rank": self.world.rank, "local_rank": self.world.local_rank,
                                    "host": socket.gethostname(), "pid": os.getpid(),
                                    "gpu": torch.cuda.get_device_name(self.device) if cuda
                                    else None})

    @property
    def leader(self):
        return self.world.leader

    def _on_sigterm(self, signum, frame):
        if not self.stopping:
            self.stopping = True
            raise Terminated()

    def close(self):
        # After a failure the group may be broken, and tearing it down could wait on a peer
        # that is gone; the process is about to exit anyway.
        if dist.is_initialized() and not self.stopping:
            dist.destroy_process_group()
        if self._old_sigterm is not None:
            # After a failure the exit status should be ours, not the agent's SIGTERM.
            signal.signal(signal.SIGTERM, signal.SIG_IGN if self.stopping else self._old_sigterm)
        self.stopping = True

    def _wait(self, work):
        # A blocking wait would hold off SIGTERM and Ctrl-C until the collective returns.
        try:
            while not work.is_completed():
                time.sleep(_POLL_S)
            work.wait()
        except RuntimeError as e:
            self.stopping = True
            raise _Lost(_short(e)) from None

    def exchange(self, obj):
        """Every rank's `obj` (JSON values), in rank order, on every rank."""
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        size = torch.tensor([data.numel()])
        sizes = [torch.zeros_like(size) for _ in range(self.world.size)]
        self._wait(dist.all_gather(sizes, size, async_op=True))
        sizes = [int(s.item()) for s in sizes]
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[:len(data)] = data
        out = [torch.empty_like(padded) for _ in range(self.world.size)]
        self._wait(dist.all_gather(out, padded, async_op=True))
        return [json.loads(bytes(t[:n].numpy()).decode()) for t, n in zip(out, sizes)]

    def agree(self, error=None):
        """Every rank says whether it failed (an HlbError or None); if any did, all stop:
        rank 0 with the first failure, naming its rank, the others quietly."""
        said = self.exchange(None if error is None else [str(error), error.exit_code])
        failed = [(rank, s) for rank, s in enumerate(said) if s is not None]
        if not failed:
            return
        rank, (text, code) = failed[0]
        text = text if rank == 0 else f"rank {rank}: {text}"
        raise HlbError(text, code) if self.leader else AlreadyReported(text, code)

    def describe(self):
        """What a record keeps about the processes: run i ran on rank i % world_size."""
        return {"world_size": self.world.size, "backend": self.backend,
                "ranks": [{k: p[k] for k in ("rank", "local_rank", "host", "gpu")}
                          for p in self.peers]}

    def _gone(self):
        """The ranks on this machine whose process has ended (waiting a moment, since a
        crashing worker may still be exiting when the collective fails)."""
        host = socket.gethostname()
        deadline = time.monotonic() + 1.0
        while True:
            gone = [p for p in self.peers
                    if p["host"] == host and p["pid"] != os.getpid() and not _alive(p["pid"])]
            if gone or time.monotonic() > deadline:
                return gone
            time.sleep(0.05)

    def lost(self, e, when):
        """One line for a worker that stopped (`e` a SIGTERM or a failed collective): which
        rank, when, and why we noticed; None for any other exception."""
        if not isinstance(e, (Terminated, _Lost)):
            return None
        self.stopping = True
        gone = self._gone()
        remote = [p["rank"] for p in self.peers if p["host"] != socket.gethostname()]
        if gone:
            who = ", ".join(f"rank {p['rank']} (pid {p['pid']})" for p in gone) + " ended"
        elif remote:
            who = "rank unknown: one on another machine?"
        else:
            who = "rank unknown"
        why = "SIGTERM from torchrun's agent" if isinstance(e, Terminated) else str(e)
        if "timed out" in why.lower():
            why += f"; set {TIMEOUT_ENV} to wait longer than {self.timeout:g} s"
        text = (f"a worker stopped ({who}) {when} ({why}); finished runs gathered before are "
                "kept; torchrun's report names the failed rank")
        return HlbError(text) if self.leader else AlreadyReported(text)
