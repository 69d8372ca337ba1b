"""`Probe`: what a profiler may ask of a running engine, across its processes (`engine.probe`; `profiling/` drives
it). It holds no state of the engine's: it asks the engine's recorder, and each stage's worker through
`Executor.call` (a `uni` stage shares the engine's process, so the engine's own recorder and profiler cover it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from engine.request import EngineError
from engine.runtime.control import CaptureStopped, DrainEvents, Events, SetRecording, StartCapture, StopCapture
from engine.runtime.executor import Executor
from telemetry.capture import TorchCapture, TorchTrace
from telemetry.events import EventBatch, Recorder, Timeline, merge_timelines


class Probe:
    def __init__(self, stages: Mapping[str, Executor], recorder: Recorder) -> None:
        self.stages, self.recorder = stages, recorder
        self._capture: TorchCapture | None = None

    def worker_pids(self) -> dict[str, int]:
        """Stage name -> pid of its worker process (`mp` stages only; `uni` stages run in the engine's process)."""
        return {kind: pid for kind, s in self.stages.items() if s.alive and (pid := s.pid) is not None}

    def timeline(self) -> Timeline:
        """Every process's events since the last call, merged on the shared clock (drains the recorders)."""
        batches = [self.recorder.drain_batch()]
        for stage in self.stages.values():
            if stage.alive and isinstance(reply := stage.call(DrainEvents(), timeout_s=30.0), Events):
                batches.append(EventBatch.from_bytes(reply.data))
        return merge_timelines(batches)

    def set_recording(self, enabled: bool) -> None:
        """Event recording on or off in every engine process (on by default; off measures what it costs)."""
        self.recorder.enabled = enabled
        for stage in self.stages.values():
            stage.call(SetRecording(enabled))

    def start_capture(self, run_dir: str | Path) -> Path:
        """torch.profiler in every process that runs a stage; traces go to `<run_dir>/tb/<process>.<ns>.pt.trace.json`
        (TensorBoard's profiler plugin: logdir `run_dir`, run `tb`). Returns the tb folder."""
        from torch._C._profiler import _ExperimentalConfig

        if self._capture is not None:
            raise EngineError("a torch.profiler capture is already running")
        tb_dir = Path(run_dir) / "tb"
        self._capture = TorchCapture(tb_dir, "engine", self.recorder)
        # `uni` stages are threads started before the capture: only a profiler on all threads sees their ops
        self._capture.options["experimental_config"] = _ExperimentalConfig(profile_all_threads=True)
        self._capture.start()
        try:
            for stage in self.stages.values():
                stage.call(StartCapture(str(tb_dir)))
        except BaseException:
            self.stop_capture()
            raise
        return tb_dir

    def stop_capture(self) -> list[TorchTrace]:
        """Stop every capture started by `start_capture`; the traces, for `profiling.trace.chrome_trace`."""
        capture, self._capture = self._capture, None
        if capture is None:
            return []
        traces = [capture.stop()]
        for stage in self.stages.values():
            reply = stage.call(StopCapture(), timeout_s=120.0)
            if isinstance(reply, CaptureStopped) and reply.trace is not None:
                traces.append(reply.trace)
        return traces

    def close(self) -> None:
        """Stop this process's profiler if a capture was left running (the workers' end with them)."""
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.stop()
