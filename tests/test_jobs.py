import threading
import time

import pytest

from modules.errors import InvalidRequestError, QueueFullError
from modules.jobs import JobFailedError, JobQueue, JobStatus


@pytest.fixture
def q():
    queue = JobQueue(max_pending=3)
    yield queue
    queue.shutdown()


def test_fifo_one_at_a_time(q):
    order, running = [], []

    def work(tag):
        def fn(job):
            running.append(tag)
            assert len(running) == 1
            time.sleep(0.02)
            order.append(tag)
            running.remove(tag)
            return tag

        return fn

    jobs = [q.submit(work(i)) for i in range(3)]
    assert [j.wait(5) for j in jobs] == [0, 1, 2]
    assert order == [0, 1, 2]
    assert all(j.status is JobStatus.DONE for j in jobs)


def test_webui_error_is_reraised_and_next_job_works(q):
    def bad(job):
        raise InvalidRequestError("steps must be positive")

    job = q.submit(bad)
    with pytest.raises(InvalidRequestError, match="steps"):
        job.wait(5)
    assert job.status is JobStatus.FAILED
    assert q.submit(lambda job: 42).wait(5) == 42


def test_crash_becomes_job_failed_with_error_id(q, caplog):
    job = q.submit(lambda job: 1 / 0)
    with pytest.raises(JobFailedError, match=r"Internal error \[[0-9a-f]{8}\]: ZeroDivisionError"):
        job.wait(5)
    assert "crashed" in caplog.text


def test_interrupt_and_progress(q):
    started = threading.Event()

    def long(job):
        started.set()
        for step in range(1, 1000):
            job.report(step, 1000)
            if job.should_stop():
                return step
            time.sleep(0.005)
        return -1

    job = q.submit(long)
    started.wait(5)
    time.sleep(0.05)
    assert 0 < job.progress < 1 and job.eta is not None
    q.interrupt_all()
    assert 0 < job.wait(5) < 1000
    assert job.progress == 1.0


def test_skip_flag_is_per_batch(q):
    def fn(job):
        job.skip()
        first = job.should_skip()
        job.clear_skip()
        return first, job.should_skip()

    assert q.submit(fn).wait(5) == (True, False)


def test_queue_full(q):
    gate = threading.Event()
    q.submit(lambda job: gate.wait(5))
    time.sleep(0.05)  # the first job is running, not pending
    for _ in range(3):
        q.submit(lambda job: None)
    with pytest.raises(QueueFullError):
        q.submit(lambda job: None)
    gate.set()


def test_wait_timeout(q):
    gate = threading.Event()
    job = q.submit(lambda job: gate.wait(5))
    with pytest.raises(TimeoutError):
        job.wait(0.01)
    gate.set()
    job.wait(5)


def test_find_by_id(q):
    gate = threading.Event()
    job = q.submit(lambda job: gate.wait(5), job_id="task(abc)")
    time.sleep(0.05)
    assert q.find("task(abc)") is job and q.current is job
    gate.set()
    job.wait(5)


def test_previews_are_wanted_while_someone_asks_and_kept_with_their_step(q, monkeypatch):
    from PIL import Image

    from modules import jobs

    clock = [1000.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    job = q.submit(lambda job: None)
    job.wait(5)
    assert not job.preview_wanted() and job.current_image is None  # nobody asked yet
    job.want_preview()
    clock[0] += jobs.PREVIEW_WATCH_S - 0.1
    assert job.preview_wanted()
    clock[0] += 0.2
    assert not job.preview_wanted()  # the watcher went away: the worker stops drawing
    first, second = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), "red")
    job.show_preview(first, 10)
    job.show_preview(second, 20)
    assert (job.current_image, job.preview_step, job.id_live_preview) == (second, 20, 2)


def test_stop_generating_lets_the_batch_finish(q):
    job = q.submit(lambda job: None)
    job.wait(5)
    assert not job.stopping_generation and not job.should_stop_after_batch()
    job.stop_generating()
    assert job.stopping_generation and job.should_stop_after_batch() and not job.should_stop()
