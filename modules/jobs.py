"""JobQueue: one worker thread runs jobs in FIFO order; Job holds id, status, progress, result, interrupt/skip."""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from modules.errors import QueueFullError, WebuiError

logger = logging.getLogger(__name__)

# How long one progress request keeps live previews coming: the web page asks every 0.25 s, API clients typically
# every 0.5-2 s; when nobody asks, the worker draws nothing.
PREVIEW_WATCH_S = 5.0
# Finished job ids remembered for ``/internal/progress``'s ``completed`` (A1111 keeps a few too).
FINISHED_IDS_KEPT = 64


class JobStatus(str, enum.Enum):
    """Lifecycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobFailedError(WebuiError):
    """An unexpected error inside a job; the message carries the error id logged with the traceback."""

    status_code = 500


@dataclass
class Job:
    """One unit of work for the worker thread.

    ``fn`` receives the job itself so it can report progress and poll ``should_stop``/``should_skip``.
    Progress fields are written by the worker and read by other threads (plain attribute writes are atomic).
    """

    fn: Callable[[Job], Any]
    kind: str = "job"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: JobStatus = JobStatus.QUEUED
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    job_no: int = 0
    job_count: int = 1
    textinfo: str = ""
    result: Any = None
    error: BaseException | None = None
    current_image: Image.Image | None = None  # the latest live preview (drawn by the worker, engine/previews.py)
    id_live_preview: int = 0  # counts previews: a watcher re-sends the image only when this moved
    preview_step: int = 0
    _preview_wanted_at: float = field(default=-math.inf, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _interrupt: threading.Event = field(default_factory=threading.Event, repr=False)
    _skip: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop_after_batch: threading.Event = field(default_factory=threading.Event, repr=False)

    def interrupt(self) -> None:
        """Ask the job to stop as soon as possible (checked after every sampling step)."""
        self._interrupt.set()

    def stop_generating(self) -> None:
        """Ask the job to stop once the current batch is done (A1111's "Don't Interrupt in the middle")."""
        self._stop_after_batch.set()

    def should_stop_after_batch(self) -> bool:
        """Whether the job should start no further batch."""
        return self._stop_after_batch.is_set()

    @property
    def stopping_generation(self) -> bool:
        """Whether it stops after the current batch (A1111's ``state.stopping_generation``)."""
        return self._stop_after_batch.is_set()

    def skip(self) -> None:
        """Ask the job to abandon the current batch and continue with the next one."""
        self._skip.set()

    def should_stop(self) -> bool:
        """Whether interrupt was requested."""
        return self._interrupt.is_set()

    def should_skip(self) -> bool:
        """Whether skip (of the current batch) was requested."""
        return self._skip.is_set()

    def clear_skip(self) -> None:
        """Reset the skip flag at the start of a batch."""
        self._skip.clear()

    @property
    def interrupted(self) -> bool:
        """Whether interrupt was requested."""
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        """Whether skip is pending for the current batch."""
        return self._skip.is_set()

    def report(self, step: int, total_steps: int, job_no: int = 0, job_count: int = 1) -> None:
        """Record progress: ``step`` of ``total_steps`` in batch ``job_no`` of ``job_count``."""
        self.step, self.total_steps, self.job_no, self.job_count = step, total_steps, job_no, job_count

    def want_preview(self) -> None:
        """Someone watches this job (a progress request that takes the live preview): draw previews for a while."""
        self._preview_wanted_at = time.monotonic()

    def preview_wanted(self) -> bool:
        """Whether a watcher asked within the last ``PREVIEW_WATCH_S`` seconds."""
        return time.monotonic() - self._preview_wanted_at < PREVIEW_WATCH_S

    def show_preview(self, image: Image.Image, step: int) -> None:
        """Keep the live preview drawn after sampling step ``step`` (called by the worker)."""
        self.current_image, self.preview_step = image, step
        self.id_live_preview += 1

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1], A1111's formula (batches and steps)."""
        if self.status is JobStatus.DONE:
            return 1.0
        if self.status is not JobStatus.RUNNING or self.job_count <= 0:
            return 0.0
        frac = self.job_no / self.job_count
        if self.total_steps > 0:
            frac += self.step / self.total_steps / self.job_count
        return min(frac, 1.0)

    @property
    def eta(self) -> float | None:
        """Estimated seconds left, from the elapsed time and progress; None before any progress."""
        if self.started_at is None or self.progress <= 0:
            return None
        elapsed = time.time() - self.started_at
        return max(elapsed / self.progress - elapsed, 0.0)

    @property
    def done(self) -> bool:
        """Whether the job finished (successfully or not)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes and return its result, re-raising its error.

        Raises:
            TimeoutError: If ``timeout`` passes first.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class JobQueue:
    """FIFO queue with one worker thread that owns the GPU. Callers only enqueue and wait."""

    def __init__(self, max_pending: int = 64, name: str = "gpu-worker") -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: list[Job] = []
        self._current: Job | None = None
        self._completed = itertools.count()
        self.completed_count = 0
        self._finished_ids: collections.deque[str] = collections.deque(maxlen=FINISHED_IDS_KEPT)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Job], Any], kind: str = "job", job_id: str | None = None) -> Job:
        """Enqueue ``fn`` and return its Job at once.

        Raises:
            QueueFullError: When ``max_pending`` jobs are already waiting.
        """
        job = Job(fn=fn, kind=kind) if job_id is None else Job(fn=fn, kind=kind, id=job_id)
        with self._lock:
            if len(self._pending) >= self._max_pending:
                raise QueueFullError(f"The queue already holds {self._max_pending} jobs; try again later.")
            self._pending.append(job)
        self._queue.put(job)
        return job

    @property
    def current(self) -> Job | None:
        """The running job, if any."""
        return self._current

    @property
    def pending(self) -> list[Job]:
        """Jobs waiting to run, oldest first (a copy)."""
        with self._lock:
            return list(self._pending)

    def find(self, job_id: str) -> Job | None:
        """Return the running or pending job with this id, if any."""
        cur = self._current
        if cur is not None and cur.id == job_id:
            return cur
        return next((j for j in self.pending if j.id == job_id), None)

    def finished(self, job_id: str) -> bool:
        """Whether the job with this id is one of the last ``FINISHED_IDS_KEPT`` to finish."""
        with self._lock:
            return job_id in self._finished_ids

    def interrupt_all(self) -> None:
        """Interrupt the running job (pending jobs stay queued, as in A1111)."""
        cur = self._current
        if cur is not None:
            cur.interrupt()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the worker after the running job; pending jobs are left unrun."""
        self.interrupt_all()
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
                self._current = job
            self._run(job)
            with self._lock:
                self._current = None
                self.completed_count = next(self._completed) + 1
                self._finished_ids.append(job.id)
            del job  # the worker keeps no finished job (its result may hold a whole model) while it waits

    @staticmethod
    def _run(job: Job) -> None:
        job.status, job.started_at = JobStatus.RUNNING, time.time()
        try:
            job.result = job.fn(job)
            job.status = JobStatus.DONE
        except WebuiError as exc:
            logger.warning("Job %s (%s) failed: %s", job.id, job.kind, exc)
            job.error, job.status = exc, JobStatus.FAILED
        except BaseException as exc:
            error_id = uuid.uuid4().hex[:8]
            logger.exception("Job %s (%s) crashed [error id %s]", job.id, job.kind, error_id)
            job.error = JobFailedError(f"Internal error [{error_id}]: {type(exc).__name__}: {exc}")
            job.status = JobStatus.FAILED
        finally:
            job.finished_at = time.time()
            job._done.set()
