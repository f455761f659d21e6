"""Running under torchrun: the runs spread over many processes (one GPU each), rank 0 reports.

    torchrun --nproc_per_node=8 main.py --runs 200 --json out.json

Run i goes to rank i % world and keeps seed `seed + i`, so which runs exist and their seeds do
not depend on the number of processes. The runs go in rounds of `world` (in round r, rank k
runs r * world + k); after each round every rank gets every result, rank 0 prints the rows of
the other ranks' runs in run order (so the output reads as one table) and hands the records
to `on_round`, which the command line uses to rewrite the --json record: a failure loses at
most the round in flight. Results travel as JSON text in uint8 tensors, never as pickles.

Without torchrun (no WORLD_SIZE, RANK or LOCAL_RANK in the environment) `joined` yields None
and nothing here runs.
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

from hlb.errors import HlbError, UsageError
from hlb.runs import Bench, Quiet, Stopped, close_records, load_data, out_of_memory_error
from hlb.stats import summarize
from hlb.train import EpochRow, RunResult

TIMEOUT_ENV = "HLB_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300      # how long a rank waits for the others in one collective
_POLL_S = 0.01               # collectives are polled so that signals land while waiting
_ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class Terminated(BaseException):
    """SIGTERM, as torchrun's agent sends to the remaining workers once one has failed.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""


class _Lost(Exception):
    """A collective failed: another rank died, hung past the timeout, or the network broke."""


def _error(text, exit_code=1, quiet=False):
    """A one-line HlbError with this exit status. A quiet one is rank 0's to report: the other
    ranks exit with its status and say nothing (hlb.cli.main checks `quiet`)."""
    error = HlbError(text)
    error.exit_code, error.quiet = exit_code, quiet
    return error


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
def joined(device):
    """Join torchrun's process group for `device` ("cuda" or "cpu") and yield a Session;
    yield None when not under torchrun. A SIGTERM or a broken collective that escapes the
    block becomes a one-line HlbError (on rank 0) naming the rank that stopped, if it can."""
    world = world_from_env()
    if world is None:
        yield None
        return
    session = Session(world, device, timeout_s())
    try:
        session.start()
        yield session
    except (Terminated, _Lost) as e:
        raise session.lost_error(e, "before the runs") from None
    finally:
        session.close()


def _alive(pid):
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The state follows the command name, which is in parentheses and may hold spaces.
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:                 # no /proc (macOS): ask the kernel instead
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except OSError:
            return True


def _short(e):
    """The first sentence of a collective's error, without gloo's source location."""
    text = " ".join(str(e).split())
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].rstrip(".") or type(e).__name__


def _to_result(data):
    return RunResult(**{**data, "epochs": [EpochRow(**row) for row in data["epochs"]]})


class Session:
    """This process's place among torchrun's workers: its rank, device and process group."""

    def __init__(self, world, device, timeout):
        self.world = world
        self.timeout = timeout
        self.stopping = False        # set once the run is ending; later SIGTERMs are ignored
        self.peers = []              # every rank's host, pid and GPU, once started
        self._old_sigterm = None
        if device == "cuda":
            if world.local_rank >= torch.cuda.device_count():
                # Not a UsageError: rank 0 may not share it, so this rank says it itself.
                raise _error(f"LOCAL_RANK {world.local_rank} but only "
                             f"{torch.cuda.device_count()} GPU(s) are visible here; start at "
                             "most that many processes per machine (--nproc_per_node)", 2)
            self.device, self.backend = f"cuda:{world.local_rank}", "nccl"
        else:
            self.device, self.backend = "cpu", "gloo"

    def start(self):
        """Take over SIGTERM, join the process group, and meet the other ranks."""
        self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        cuda = self.backend == "nccl"
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
        data = data.to(self.device)          # nccl moves only tensors on the rank's GPU
        size = torch.tensor([data.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world.size)]
        self._wait(dist.all_gather(sizes, size, async_op=True))
        sizes = [int(s.item()) for s in sizes]
        padded = torch.zeros(max(sizes), dtype=torch.uint8, device=self.device)
        padded[:len(data)] = data
        out = [torch.empty_like(padded) for _ in range(self.world.size)]
        self._wait(dist.all_gather(out, padded, async_op=True))
        return [json.loads(bytes(t[:n].cpu().numpy()).decode()) for t, n in zip(out, sizes)]

    def agree(self, error=None):
        """Every rank says whether it failed (an HlbError or None); if any did, all stop:
        rank 0 with the first failure, naming its rank, the others quietly."""
        said = self.exchange(None if error is None else [str(error), error.exit_code])
        failed = [(rank, s) for rank, s in enumerate(said) if s is not None]
        if not failed:
            return
        rank, (text, code) = failed[0]
        raise _error(text if rank == 0 else f"rank {rank}: {text}", code, not self.leader)

    def load_data(self, data_dir=None):
        """CIFAR-10, prepared once: rank 0 loads (downloads, verifies, caches) while the others
        wait; then the first rank of every other machine (a cache hit on a shared disk, its
        own preparation on a local one); then the rest, from the cache."""
        turn = 0 if self.leader else 1 if self.world.local_rank == 0 else 2
        cifar = None
        for phase in range(3):
            error = None
            if phase == turn:
                try:
                    cifar = load_data(data_dir)
                except HlbError as e:
                    error = e
            self.agree(error)
        return cifar

    def train(self, recipe, runs, seed=0, data_dir=None, listener=None, target_acc=None,
              on_round=None):
        """hlb.runs.train spread over the ranks, for a Recipe: the Record of every run, on
        every rank; `on_round(record)` as in run_benches."""
        wall = time.perf_counter()
        each_round = on_round and (lambda records, finished: on_round(records[0]))
        try:
            bench = Bench(recipe, self.device, self.load_data(data_dir), seed)
            record = self.run_benches([bench], runs, [listener or Quiet()], target_acc,
                                      each_round)[0]
        except Stopped as e:
            e.record.wall_s = time.perf_counter() - wall
            raise
        record.wall_s = time.perf_counter() - wall
        return record

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

    def lost_error(self, e, when):
        """One line for a worker that stopped: which rank, when, and why we noticed."""
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
        return _error(text, quiet=not self.leader)

    def run_benches(self, benches, runs, listeners, target_acc=None, on_round=None):
        """hlb.runs.run_benches spread over the ranks; every rank returns the records of all
        runs gathered. Rank 0 prints through `listeners`; the others print nothing. After each
        round `on_round(records, finished)` runs on rank 0, with `stopped` saying the record is
        unfinished, and `finished` the runs gathered per bench; it may return the indices of
        benches to stop from the next round on (every rank gets rank 0's set). Ctrl-C, an
        out-of-memory on any rank, a worker that stops or a broken collective raise Stopped
        with the runs of the finished rounds."""
        wall = time.perf_counter()
        size = self.world.size
        listeners = listeners if self.leader else [Quiet()] * len(benches)
        records = [dataclasses.replace(b.record, results=[], target_acc=target_acc)
                   for b in benches]
        first, error = 0, False
        active = list(range(len(benches)))      # benches still running (sweep --prune)
        try:
            for bench, listener in zip(benches, listeners):
                bench.warmup(listener)
            for first in range(0, runs, size):
                payload = self._run_mine(benches, first + self.world.rank, runs, listeners,
                                         target_acc, active)
                payloads = self.exchange(payload)
                self._take(records, payloads, first, runs, listeners, wall, active)
                failed = [(rank, p["error"]) for rank, p in enumerate(payloads) if p["error"]]
                if failed:
                    rank, text = failed[0]
                    raise HlbError(text if rank == 0 else f"rank {rank}: {text}")
                if on_round and self.leader:
                    gathered = min(first + size, runs)
                    for record in records:
                        record.stopped = f"unfinished: {gathered} of {runs} run(s) gathered"
                    stop = on_round(records, gathered)
                    for record in records:
                        record.stopped = None
                if on_round:        # every rank stops the benches rank 0 stopped
                    stop = self.exchange(sorted(stop or ()) if self.leader else None)[0]
                    active = [j for j in active if j not in set(stop)]
        except KeyboardInterrupt:
            self.stopping = True
            error = None
        except HlbError as e:
            error = e if self.leader else _error(str(e), e.exit_code, quiet=True)
        except (Terminated, _Lost) as e:
            error = self.lost_error(e, f"in round {first // size + 1} of {-(-runs // size)}")
        return close_records(records, error, wall, target_acc)

    def _run_mine(self, benches, i, runs, listeners, target_acc, active):
        """This rank's run i of every active bench, as JSON values (none past the last run)."""
        done, error = [], None
        if i < runs:
            try:
                for bench, listener in [(benches[j], listeners[j]) for j in active]:
                    done.append(dataclasses.asdict(bench.run(i, runs, listener, target_acc)))
            except torch.cuda.OutOfMemoryError as e:
                done, error = [], str(out_of_memory_error(e, benches[0].recipe))
        return {"results": done, "warmup_s": [b.record.warmup_s for b in benches],
                "error": error}

    def _take(self, records, payloads, first, runs, listeners, wall, active):
        """Add the round's results to the active benches' records in run order; rank 0 prints
        the other ranks' runs as if they had run here."""
        for rank, payload in enumerate(payloads):
            for j, data in zip(active, payload["results"]):
                record, result = records[j], _to_result(data)
                if self.leader and rank != self.world.rank:
                    listener = listeners[j]
                    listener.run_started(first + rank, runs)
                    for row in result.epochs:
                        listener.epoch(row)
                    listener.run_finished(result)
                record.results.append(result)
        for j, record in enumerate(records):
            record.warmup_s = max(p["warmup_s"][j] for p in payloads)
            record.summary = summarize(record.results)
            record.wall_s = time.perf_counter() - wall
