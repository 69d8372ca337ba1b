"""The runtime: both executors run the same stage to the same outputs; the shared-memory transport reuses its ring,
waits without spinning and refuses what cannot fit; a dead worker is reported and replaced; close leaves nothing."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import ExitStack
from multiprocessing import get_context, resource_tracker

import psutil
import pytest
import torch

from engine.model.sampling import SamplingParams
from engine.runtime import ExecutorError, MpExecutor, PayloadTooLarge, TransportError, make_executor, transport
from engine.runtime.control import DrainEvents
from engine.runtime.restarter import Restarter, RestartPolicy, StageState
from engine.runtime.transport import RING_PREFIX, PeerGone, Receiver, Sender, ShmRing
from engine.runtime.worker import Worker
from engine.stages.messages import AudioOut, Cancel, CodeChunk, StageInput, StageOutput, TalkerJob
from engine.stages.stage import Stage
from telemetry import events as ev
from telemetry.events import EventBatch, Recorder, get_recorder


class Doubler:
    """A fake Code2Wav: holds a request's chunks until its last one arrives, then emits one AudioOut per step
    (samples = codes * 2 as float). Request "boom" raises in its step; request "stuck" sets `stuck` and then blocks
    its step until `release` is set (multiprocessing Events, so that they reach a worker)."""

    name = "fake"

    def __init__(self, stuck=None, release=None) -> None:
        self.held: dict[str, list[CodeChunk]] = {}
        self.ready: deque[CodeChunk] = deque()
        self.stuck, self.release = stuck, release

    def submit(self, message: StageInput) -> None:
        if isinstance(message, Cancel):
            self.held.pop(message.request_id, None)
        elif isinstance(message, CodeChunk):
            self.held.setdefault(message.request_id, []).append(message)
            if message.is_last:
                self.ready.extend(self.held.pop(message.request_id))

    def has_work(self) -> bool:
        return bool(self.ready)

    def step(self) -> list[StageOutput]:
        c = self.ready.popleft()
        if c.request_id == "boom":
            raise RuntimeError("the stage broke on purpose")
        if c.request_id == "stuck":
            self.stuck.set()
            self.release.wait()
        samples = c.codes.float().flatten() * 2
        return [AudioOut(c.request_id, c.index, samples, frames=c.codes.shape[0], is_last=c.is_last)]


def make_broken() -> Doubler:
    raise RuntimeError("no checkpoint at /nowhere")


class Outputs:
    """on_output and on_death callbacks that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[StageOutput] = []
        self.deaths: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, out: StageOutput) -> None:
        with self.cond:
            self.items.append(out)
            self.cond.notify_all()

    def died(self, reason: str) -> None:
        with self.cond:
            self.deaths.append(reason)
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 60.0) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "timed out"


def signal_when_a_writer_waits(monkeypatch) -> threading.Event:
    """An event set when a Sender starts waiting for ring space (the transport's one blocking wait), so that a test can
    act once the writer is blocked, rather than after a sleep that hopes it is."""
    waiting, real_wait = threading.Event(), transport.wait

    def wait(objects, timeout=None):
        waiting.set()
        return real_wait(objects, timeout)

    monkeypatch.setattr(transport, "wait", wait)
    return waiting


def chunks(seed: int = 0) -> list[CodeChunk]:
    """Three interleaved requests; chunks up to 307 KB so a 1 MiB ring wraps several times; an empty last chunk."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, frames in enumerate((2, 2400, 700, 2400, 16, 1900, 2400, 8)):
        for r in ("a", "b", "c"):
            codes = torch.randint(0, 2048, (frames, 16), generator=g)
            out.append(CodeChunk(r, i, codes, is_last=False))
    out += [CodeChunk(r, 8, torch.zeros(0, 16, dtype=torch.int64), is_last=True) for r in "abc"]
    return out


def run(kind: str, inputs: list[CodeChunk], **options) -> tuple[list[AudioOut], object]:
    outs = Outputs()
    ex = make_executor(kind, Doubler, outs, "fake", on_death=outs.died, **options)
    ex.start()
    try:
        for m in inputs:
            ex.submit(m)
        outs.wait(lambda: len(outs.items) == len(inputs))
        return sorted(outs.items, key=lambda o: (o.request_id, o.index)), ex.call(DrainEvents())
    finally:
        ex.close()


def test_uni_and_mp_give_the_same_outputs_through_a_wrapping_ring():
    inputs = chunks()
    rec = get_recorder()
    rec.drain()
    uni, drained = run("uni", inputs)
    assert drained is None  # a `uni` stage has no process of its own to ask: its events are the engine's
    mp, drained = run("mp", inputs, ring_bytes=1 << 20)
    worker_events = EventBatch.from_bytes(drained.data)
    assert [(o.request_id, o.index, o.frames, o.is_last) for o in uni] == [
        (o.request_id, o.index, o.frames, o.is_last) for o in mp
    ]
    for u, m in zip(uni, mp, strict=True):
        assert m.samples.dtype == torch.float32 and torch.equal(u.samples, m.samples)
    sent = sum(c.codes.numel() * 8 for c in inputs)
    assert sent > 3 * (1 << 20)  # the input ring was reused at least three times over

    # the engine side recorded the send (serialise, copy in) and the receipt of outputs (copy out, handoff) ...
    engine = [e for e in rec.drain() if e.track == ev.TRANSPORT]
    assert {ev.SERIALIZE, ev.COPY, ev.HANDOFF} <= {e.name for e in engine}
    copied_in = sum(e.args["bytes"] for e in engine if e.name == ev.COPY and e.pid == os.getpid())
    assert copied_in >= sent
    # ... and the worker its side: every input handed off with its bytes, labelled with the stage's name
    assert worker_events.process == "fake" and worker_events.pid != os.getpid()
    handoffs = [e for e in worker_events.events if e.name == ev.HANDOFF]
    assert len(handoffs) == len(inputs) and sum(e.args["bytes"] for e in handoffs) == sent
    assert all(e.dur_ns > 0 and e.request in "abc" for e in handoffs)


def test_talker_job_crosses_with_its_sampling_params_and_optional_tensors():
    ctx = get_context("spawn")
    (r, w), (bell_r, bell_w) = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)
    ring = ShmRing(1 << 16)
    try:
        job = TalkerJob(
            "r1",
            torch.arange(7),
            "english",
            SamplingParams(top_k=3),
            seed=None,
            credits=4,
            x_vector=torch.randn(16, dtype=torch.bfloat16),
            ref_codes=torch.ones(3, 16, dtype=torch.int64),
        )
        Sender(w, ring, bell_r, Recorder()).send(job)
        got = Receiver(r, ring, bell_w, Recorder()).recv()
        assert isinstance(got, TalkerJob) and got.params == SamplingParams(top_k=3) and got.instruct_ids is None
        assert torch.equal(got.text_ids, job.text_ids) and torch.equal(got.x_vector, job.x_vector)
        assert torch.equal(got.ref_codes, job.ref_codes)
    finally:
        ring.unlink()
        for c in (r, w, bell_r, bell_w):
            c.close()


def test_a_full_ring_blocks_the_writer_until_space_is_freed_and_times_out_if_never(monkeypatch):
    ctx = get_context("spawn")
    (r, w), (bell_r, bell_w) = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)
    ring, rec = ShmRing(256 << 10), Recorder()
    sender, receiver = Sender(w, ring, bell_r, rec, timeout_s=60), Receiver(r, ring, bell_w, Recorder())
    writer_waits = signal_when_a_writer_waits(monkeypatch)
    try:
        big = [torch.full((100 << 10,), i, dtype=torch.uint8) for i in range(10)]
        writer = threading.Thread(target=lambda: [sender.send(CodeChunk("r", i, t, False)) for i, t in enumerate(big)])
        writer.start()
        assert writer_waits.wait(60)  # two messages fill the ring: the third waits for the reader
        for i in range(10):
            assert torch.equal(receiver.recv().codes, big[i])
        writer.join(60)
        assert any(e.name == ev.WAIT for e in rec.drain())

        sender.timeout_s = 0.2  # nobody reads now
        sender.send(CodeChunk("r", 0, big[0], False))
        sender.send(CodeChunk("r", 1, big[1], False))
        with pytest.raises(TransportError, match="receiver is stuck"):
            sender.send(CodeChunk("r", 2, big[2], False))
        with pytest.raises(PayloadTooLarge, match=r"307200-byte message does not fit the 262144-byte ring"):
            sender.send(CodeChunk("r", 3, torch.zeros(300 << 10, dtype=torch.uint8), False))
    finally:
        ring.unlink()
        for c in (r, w, bell_r, bell_w):
            c.close()


def test_a_writer_waiting_for_space_learns_at_once_that_its_reader_is_gone(monkeypatch):
    """Between two workers there is no process sentinel to watch: the reader's death closes the doorbell's far end,
    and that end of file wakes the writer (a direct link's talker) long before its timeout."""
    ctx = get_context("spawn")
    (r, w), (bell_r, bell_w) = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)
    ring = ShmRing(256 << 10)
    sender = Sender(w, ring, bell_r, Recorder(), timeout_s=600)
    writer_waits = signal_when_a_writer_waits(monkeypatch)
    errors: list[Exception] = []

    def write() -> None:
        try:
            for i in range(3):  # two fill the ring
                sender.send(CodeChunk("r", i, torch.zeros(100 << 10, dtype=torch.uint8), False))
        except TransportError as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        assert writer_waits.wait(60)
        bell_w.close()  # what the reader's death does to its end
        writer.join(60)
        assert not writer.is_alive() and isinstance(errors[0], PeerGone)
    finally:
        ring.unlink()
        for c in (r, w, bell_r):
            c.close()


def channel(stack: ExitStack) -> tuple[Sender, Receiver]:
    """Both ends of one direction (a ring, a header pipe, a doorbell), all closed and unlinked when `stack` ends."""
    ctx = get_context("spawn")
    (r, w), (bell_r, bell_w) = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)
    ring = ShmRing(256 << 10)
    stack.callback(ring.unlink)
    for c in (r, w, bell_r, bell_w):
        stack.callback(c.close)
    return Sender(w, ring, bell_r, Recorder()), Receiver(r, ring, bell_w, Recorder())


def test_a_worker_drops_a_link_whose_other_end_died_and_goes_on():
    """The talker's worker writes down a link whose reader was just killed: the chunk goes to the engine instead
    (which fails the request it belonged to) and the link is dropped. Code2wav's worker reads what a link's killed
    writer sent before it died, then drops the link. Neither worker dies with its peer."""
    chunk = CodeChunk("r", 0, torch.arange(32).reshape(2, 16), False)
    with ExitStack() as stack:
        (to_engine, engine_reads), (down, code2wav_reads) = channel(stack), channel(stack)
        talker = Worker(Doubler(), "talker", inbox=None, outbox=to_engine, rec=Recorder())
        talker.downstream = down
        code2wav_reads.conn.close()  # the reader's death closes its end of the header pipe
        talker.emit(chunk)
        assert talker.downstream is None and torch.equal(engine_reads.recv().codes, chunk.codes)

    with ExitStack() as stack:
        (_, inbox), (up, link_end) = channel(stack), channel(stack)
        code2wav = Worker(Doubler(), "code2wav", inbox=inbox, outbox=None, rec=Recorder())
        code2wav.upstream[link_end.conn] = link_end
        up.send(chunk)
        up.conn.close()  # what the writer's death does to its ends
        up.doorbell.close()
        assert torch.equal(code2wav.get(block=False).codes, chunk.codes)  # what it sent before it died is read
        assert code2wav.get(block=False) is None and not code2wav.upstream


def test_an_idle_worker_uses_no_cpu_and_close_leaves_nothing_behind():
    resource_tracker.ensure_running()  # the tracker is a long-lived child of its own, not the executor's
    me = psutil.Process()
    children, threads = {p.pid for p in me.children(recursive=True)}, set(threading.enumerate())
    ours = f"{RING_PREFIX}{os.getpid()}_"  # other processes may make and drop segments meanwhile
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(ours)]
    outs = Outputs()
    ex = MpExecutor(Doubler, outs, "fake", on_death=outs.died, ring_bytes=1 << 20)
    ex.start()
    worker = psutil.Process(ex.pid)
    assert len([n for n in os.listdir("/dev/shm") if n.startswith(ours)]) == 2  # one ring each way
    ex.submit(CodeChunk("a", 0, torch.ones(4, 16, dtype=torch.int64), is_last=True))
    outs.wait(lambda: len(outs.items) == 1)

    receiver = next(t for t in me.threads() if t.id == ex._w.thread.native_id)
    worker_cpu = sum(worker.cpu_times()[:2])
    time.sleep(1.0)  # not a wait for anything: the window in which an idle worker must spend no CPU
    assert sum(worker.cpu_times()[:2]) - worker_cpu < 0.03  # blocked on its pipe, not polling
    receiver_now = next(t for t in me.threads() if t.id == receiver.id)
    assert receiver_now.user_time + receiver_now.system_time - receiver.user_time - receiver.system_time < 0.03

    ex.close()
    ex.close()  # idempotent
    assert not worker.is_running() and not outs.deaths
    assert {p.pid for p in me.children(recursive=True)} <= children
    assert set(threading.enumerate()) <= threads
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(ours)]


def test_a_killed_worker_is_reported_and_restarted(monkeypatch):
    outs = Outputs()
    stuck, release = get_context("spawn").Event(), get_context("spawn").Event()  # released never
    ex = MpExecutor(functools.partial(Doubler, stuck, release), outs, "fake", on_death=outs.died, ring_bytes=1 << 20)
    ex.start()
    writer_waits = signal_when_a_writer_waits(monkeypatch)
    try:
        small, big = torch.ones(2, 16, dtype=torch.int64), torch.zeros(2400, 16, dtype=torch.int64)  # 307 KB
        ex.submit(CodeChunk("held", 0, small, is_last=False))
        ex.submit(CodeChunk("done", 0, small, is_last=True))
        outs.wait(lambda: len(outs.items) == 1)
        ex.submit(CodeChunk("stuck", 0, small, is_last=True))  # the worker stays in this step ...
        assert stuck.wait(60)  # (and reads no more input meanwhile)
        errors: list[Exception] = []

        def fill() -> None:  # ... so its 1 MiB input ring fills and the fourth chunk waits for space
            try:
                for i in range(4):
                    ex.submit(CodeChunk("fill", i, big, is_last=False))
            except ExecutorError as exc:
                errors.append(exc)

        filler = threading.Thread(target=fill)
        filler.start()
        assert writer_waits.wait(60)
        os.kill(ex.pid, signal.SIGKILL)
        outs.wait(lambda: outs.deaths)
        filler.join(60)
        assert not filler.is_alive()
        assert "SIGKILL" in outs.deaths[0]
        assert errors and "died while a submit waited" in str(errors[0])  # woken by the death, not a timeout
        with pytest.raises(ExecutorError, match="not running"):
            ex.submit(Cancel("held"))

        ex.restart()
        ex.submit(CodeChunk("next", 0, torch.ones(2, 16, dtype=torch.int64), is_last=True))
        outs.wait(lambda: len(outs.items) == 2)
        assert outs.items[1].request_id == "next"
    finally:
        ex.close()


@pytest.mark.parametrize("kind", ["uni", "mp"])
def test_a_stage_that_raises_in_step_is_a_death_with_its_traceback(kind):
    outs = Outputs()
    ex = make_executor(kind, Doubler, outs, "fake", on_death=outs.died)
    ex.start()
    try:
        ex.submit(CodeChunk("boom", 0, torch.ones(1, 16, dtype=torch.int64), is_last=True))
        outs.wait(lambda: outs.deaths)
        assert "the stage broke on purpose" in outs.deaths[0]
    finally:
        ex.close()


@pytest.mark.parametrize("kind", ["uni", "mp"])
def test_a_factory_that_raises_fails_start_with_its_message(kind):
    ex = make_executor(kind, make_broken, Outputs(), "fake")
    with pytest.raises((ExecutorError, RuntimeError), match="no checkpoint at /nowhere"):
        ex.start()
    assert not ex.alive
    ex.close()


class FlakyExecutor:
    """Just what a Restarter drives: `restart` fails `failures` times, then brings the stage up."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures, self.attempts, self.alive = failures, [], True

    def restart(self, timeout_s: float | None = None) -> None:
        self.attempts.append(timeout_s)
        if len(self.attempts) <= self.failures:
            raise ExecutorError(f"flaky worker failed to start (attempt {len(self.attempts)})")
        self.alive = True


def test_a_restart_is_retried_with_backoff_until_a_worker_is_up():
    executor = FlakyExecutor(failures=3)
    restarter = Restarter(executor, RestartPolicy(backoff_s=0.01, max_s=600))
    executor.alive = False
    restarter.dead()
    assert restarter.state is StageState.RESTARTING and not restarter.up
    restarter.dead()  # a second report of the same death starts nothing more
    restarter.join(60)
    assert restarter.state is StageState.UP and restarter.up
    assert len(executor.attempts) == 4 and all(0 < t <= 600 for t in executor.attempts)  # each bounded by what is left


def test_restarts_give_up_once_their_time_is_spent_and_say_so_once(caplog):
    executor = FlakyExecutor(failures=10**6)
    restarter = Restarter(executor, RestartPolicy(backoff_s=0.01, max_s=0.2))
    executor.alive = False
    restarter.dead()
    restarter.join(60)
    assert restarter.state is StageState.DOWN and not restarter.up
    restarter.dead()  # down is for good
    assert restarter.state is StageState.DOWN
    gave_up = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(gave_up) == 1 and "flaky stage: no worker after" in gave_up[0] and "stays down" in gave_up[0]


def _exit_slowly_with_pipes_closed() -> Stage:
    """A worker that dies in start-up the racy way: its pipes close (the engine sees EOF) a while before it exits."""
    os.closerange(3, 65536)
    time.sleep(0.5)  # part of the scenario (a slow exit), not a wait of the test
    os._exit(3)


def test_a_worker_that_dies_during_start_up_is_reported_with_its_exit_code() -> None:
    executor = make_executor("mp", _exit_slowly_with_pipes_closed, lambda out: None, "dying", start_timeout_s=60)
    with pytest.raises(ExecutorError, match="dying worker exited with code 3 during start-up"):
        executor.start()
    executor.close()


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, *sys.argv[1:]]))
