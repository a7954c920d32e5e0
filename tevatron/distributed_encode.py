"""Encoding under ``torchrun``: each process encodes one share of the input, rank 0 writes the one output.

``torchrun --nproc_per_node N [--nnodes M ...] -m tevatron.driver.encode ...`` gives every process the
same arguments.  Each one reads and checks the whole input (so bad input fails the same way everywhere,
before any work), takes its share of the shard (a contiguous, near-equal slice: the shares concatenate
to the shard, as ``--encode_num_shard`` shards concatenate to the input), encodes it length-sorted on
its own device (``cuda:LOCAL_RANK`` on a GPU machine, else the CPU) and saves its vectors in a hidden
staging folder beside the output.  Rank 0 concatenates the parts in rank order (= input order), runs
the single-process checks and writes the output with the single-process provenance record, so the
file is the one a single process writes and the retriever, the reducer and a later single-process
re-run (``up to date``) see no difference.

Why per-rank files rather than gathering tensors over the process group: 8.8M x 768 fp32 vectors are
27 GB; object collectives would pickle them through rank 0's memory twice and gloo would push them over
TCP, while a file per rank costs one sequential write and a memory-mapped read.  Across machines the
output folder must therefore be on a filesystem every machine sees (checked before encoding).

Coordination uses a gloo process group (on GPU machines too: only small messages travel) in lockstep
checkpoints (:meth:`EncodeJob.checkpoint`): every rank reports ok or its error; when any rank failed,
rank 0 prints that one error line and every rank exits non-zero, so no rank waits for a peer that
will never come.  A peer that dies outright breaks the gloo connection (or, at worst, the collective
times out), and rank 0 says so in one line.  The staging folder is removed by rank 0 however the run
ends (a SIGKILL may leave it, hidden, like any ``.*.tmp`` file); the output appears only complete.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from tevatron.cli import EXIT_BAD_INPUT, CommandError, error_exit
from tevatron.data import shard_range
from tevatron.files import InputError, OutputError

logger = logging.getLogger("tevatron.distributed_encode")

# How long a checkpoint waits for a silent peer (a machine that vanished without closing its
# connections).  Ranks reach each checkpoint within the load imbalance of their shares, or, for the last
# one, within rank 0's merge and save (minutes for a 27 GB output).
CHECKPOINT_TIMEOUT = datetime.timedelta(hours=1)


class EncodeJob:
    """This process's place in a torchrun launch (rank, world size, device) and the checkpoints that keep
    every rank in step."""

    def __init__(self, rank: int, world_size: int, local_rank: int, store):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.progress_store = dist.PrefixStore("tevatron_encode_progress", store)
        self.staging: Path | None = None
        self.stopped = False  # a checkpoint ended the job on every rank: no further checkpoint is held
        self.exit_status: int | None = None  # the status every rank leaves with, once a checkpoint ended the job
        self.bar = None  # rank 0's progress bar while one is drawn

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """One process per GPU: ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            return device
        return torch.device("cpu")

    # ----------------------------------------------------------------------- lockstep checkpoints
    def checkpoint(self, value=None, failure: BaseException | None = None) -> list:
        """Every rank's ``value`` (in rank order), once every rank has arrived.  When any rank arrived with
        a ``failure``, every rank stops here: rank 0 prints the one error line (its own, or the first
        failing rank's), a rank that hit a bug prints its traceback, and only then (after a barrier, as
        torchrun stops the others once one exits) all exit with a non-zero status."""
        status = None if failure is None else (type(failure).__name__, str(failure), _is_user_error(failure))
        gathered: list = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, (status, value))
        except Exception as err:  # a peer died: its connection closed, or it never came
            self.stopped = True
            if failure is not None:
                raise failure
            raise CommandError(f"rank {self.rank}: lost contact with the other encoding processes (one of "
                               f"them failed or was killed; see its output): {str(err).splitlines()[0][:200]}")
        failed = [(rank, status) for rank, (status, _) in enumerate(gathered) if status is not None]
        if not failed:
            return [value for _, value in gathered]
        self.stopped = True
        self.exit_status = EXIT_BAD_INPUT if failure is None or _is_user_error(failure) else 1
        # One readable report on the shared stderr, in turns: rank 0's bar ends its line (the bar leaves
        # no newline, so anything printed next would be glued to it), the ranks that hit a bug print
        # their tracebacks, then rank 0 the one error line; all leave only after it (torchrun stops the
        # others once one exits).
        if self.bar is not None:
            self.bar.close()
        self._report_turn()
        if failure is not None and not _is_user_error(failure):
            traceback.print_exception(failure)
        self._report_turn()
        if self.is_main:
            rank, (kind, message, is_user_error) = failed[0]
            error_exit(message if is_user_error else f"rank {rank} failed ({kind}: {message}); see its traceback")
        self.cleanup()
        self._report_turn()
        # Leave at once, every rank together: a normal exit tears torch down for a while, and torchrun,
        # seeing one rank gone, kills the slower one, whose status would then read as a SIGTERM.
        self.leave_now()

    def leave_now(self) -> None:
        """Exit at once with the status the job ended with (its staging folder gone, output flushed)."""
        self.cleanup()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_status)

    @staticmethod
    def _report_turn() -> None:
        sys.stderr.flush()
        with contextlib.suppress(Exception):  # a peer that died cannot hold the others up
            dist.barrier()

    def decide(self, decide: Callable[[], bool]) -> bool:
        """Rank 0's decision (e.g. whether the output is up to date), the same on every rank."""
        return self.checkpoint(decide() if self.is_main else None)[0]

    # ----------------------------------------------------------------------- the sharded encode
    def encode_shares(self, texts: Sequence, encode: Callable, save_path) -> torch.Tensor | None:
        """Encode this rank's share of ``texts`` with ``encode(share_texts, on_batch)`` and merge every
        rank's vectors on rank 0: the whole [len(texts), dim] matrix in input order on rank 0, None on the
        others (rank 0 writes the output)."""
        if self.is_main:
            save_path = Path(save_path)
            try:
                save_path.parent.mkdir(parents=True, exist_ok=True)
                self.staging = Path(tempfile.mkdtemp(prefix=f".{save_path.name}.ranks-", suffix=".tmp",
                                                     dir=save_path.parent))
            except OSError as err:
                raise OutputError(save_path, f"could not write ({err.strerror or err})") from None
            self.progress_store.set("encoded", "0")
        staging = Path(self.checkpoint(str(self.staging) if self.is_main else None)[0])
        if not staging.is_dir():
            raise CommandError(f"{staging}: the staging folder rank 0 made beside the output is not visible to "
                               f"rank {self.rank}; encoding on several machines needs the output folder on a "
                               f"filesystem they all share")
        share = shard_range(len(texts), self.world_size, self.rank)
        self.checkpoint()  # every rank has read and checked the input and sees the staging folder
        logger.info("%d processes encode %d texts; rank 0 encodes %d", self.world_size, len(texts), len(share))
        with self._progress_bar(len(texts)) as on_batch:
            reps = encode([texts[i] for i in share], on_batch)
            if not self.is_main:
                self._save_part(staging / f"rank{self.rank}.pt", share, reps)
            self.checkpoint()  # every part is written
        return self._merge(reps, len(texts), staging) if self.is_main else None

    def _save_part(self, path: Path, share: range, reps: torch.Tensor) -> None:
        try:
            torch.save({"start": share.start, "stop": share.stop, "reps": reps.contiguous()}, path)
        except (OSError, RuntimeError) as err:  # torch's zip writer turns a full disk into a RuntimeError
            raise OutputError(path, f"could not write ({str(err).splitlines()[0][:200]})") from None

    def _merge(self, own_reps: torch.Tensor, n_texts: int, staging: Path) -> torch.Tensor:
        """Every rank's part, in rank order (rank 0's own from memory, the others memory-mapped)."""
        parts = [own_reps]
        for rank in range(1, self.world_size):
            part = torch.load(staging / f"rank{rank}.pt", map_location="cpu", weights_only=True, mmap=True)
            share = shard_range(n_texts, self.world_size, rank)
            if (part["start"], part["stop"]) != (share.start, share.stop) or part["reps"].shape[0] != len(share):
                raise RuntimeError(f"rank {rank}'s part covers {part['start']}..{part['stop']}, not {share}")
            parts.append(part["reps"])
        dim = max(part.shape[1] for part in parts)  # a share may be empty (fewer texts than processes)
        merged = torch.empty((n_texts, dim), dtype=torch.float32)
        start = 0
        for part in parts:
            if part.shape[0]:
                merged[start:start + part.shape[0]] = part
            start += part.shape[0]
        return merged

    @contextlib.contextmanager
    def _progress_bar(self, total: int):
        """One bar for the whole job on rank 0: every rank adds its finished texts to a shared counter
        (one store round trip per batch), rank 0's bar shows the sum after each of its own batches and
        is completed once every part is in."""
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"encoding ({self.world_size} processes)", unit="text") if self.is_main else None
        self.bar = bar

        def on_batch(n_done: int) -> None:
            encoded = self.progress_store.add("encoded", n_done)
            if bar is not None:
                bar.update(min(encoded, total) - bar.n)

        try:
            yield on_batch
            if bar is not None:
                bar.update(total - bar.n)
        finally:
            self.bar = None
            if bar is not None:
                bar.close()

    def cleanup(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def _on_sigterm(job: EncodeJob, signum: int) -> None:
    if job.exit_status is None:
        sys.exit(128 + signum)
    job.leave_now()


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, (InputError, CommandError))


def torchrun_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def encode_job():
    """An :class:`EncodeJob` under a torchrun launch of several processes, None otherwise.  On leaving,
    every rank passes one last checkpoint, so all exit with rank 0's outcome; the staging folder goes."""
    if torchrun_world_size() <= 1:
        yield None
        return
    store, rank, world_size = next(dist.rendezvous("env://"))
    store.set_timeout(CHECKPOINT_TIMEOUT)
    dist.init_process_group("gloo", store=dist.PrefixStore("tevatron_encode_pg", store), rank=rank,
                            world_size=world_size, timeout=CHECKPOINT_TIMEOUT)
    job = EncodeJob(rank, world_size, int(os.environ.get("LOCAL_RANK", "0")), store)
    # transformers warns that a process group exists without DDP: true, and meant for training; not shown
    logging.getLogger("transformers.training_args").addFilter(
        lambda record: "parallel_mode != ParallelMode.DISTRIBUTED" not in record.getMessage())
    if not job.is_main:  # one process speaks: the others log warnings only and draw no bars
        logging.getLogger().setLevel(logging.WARNING)
        import transformers

        transformers.utils.logging.disable_progress_bar()
    # torchrun stops the other processes with SIGTERM once one exits: leave through the clean-up below, or,
    # once a checkpoint ended the job, at once with the status every rank shares
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: _on_sigterm(job, signum))
    try:
        try:
            yield job
        except Exception as err:
            if not job.stopped:  # this rank failed on its own: the others learn it at their next checkpoint
                job.checkpoint(failure=err)
            raise
        job.checkpoint()  # rank 0 has written the output (or failed: then every rank exits non-zero)
    finally:
        job.cleanup()
        signal.signal(signal.SIGTERM, previous_handler)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
