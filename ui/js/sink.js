// The player's playback queue, on the audio clock: chunks go in as they arrive, 128-sample blocks come out as the
// audio device asks for them. It starts `lead` frames after the first chunk arrived and counts every frame it ran dry
// before the stream's end. One implementation for both hosts: the AudioWorklet (the audio thread, untouched by the
// page's main thread) and, where there is no AudioWorklet (a page served over plain http from another host), a
// ScriptProcessorNode on the main thread. Times are frames of the context's clock.
class Sink {
  constructor(lead, rate) {
    this.lead = lead; this.rate = rate;
    this.queue = []; this.offset = 0;  // chunks not yet played; samples of queue[0] already played
    this.firstArrival = null; this.startAt = null; this.playedFrom = null; this.received = 0;
    this.ended = false; this.dryFrom = null;
    this.underruns = 0; this.dryFrames = 0; this.worstDry = 0; this.lateness = -Infinity; this.trace = [];
  }
  queued() { return this.queue.reduce((n, c) => n + c.length, 0) - this.offset; }
  ms(frames) { return frames * 1000 / this.rate; }
  // A chunk came at frame `now`; returns true for the first (playback starts at `startAt`).
  push(pcm, now) {
    const first = this.firstArrival === null;
    if (first) {
      this.firstArrival = now; this.startAt = now + this.lead;
    } else {
      const ahead = this.queued() + Math.max(0, this.startAt - now);  // audio still queued when this chunk came
      this.trace.push([this.ms(now - this.firstArrival), this.ms(ahead)]);
      this.lateness = Math.max(this.lateness, this.ms(now - this.firstArrival - this.received));
      if (this.dryFrom !== null) {  // ran dry until now: one underrun
        const gap = Math.max(0, now - this.dryFrom);
        this.underruns++; this.dryFrames += gap; this.worstDry = Math.max(this.worstDry, gap);
        this.dryFrom = null;
      }
    }
    this.queue.push(pcm); this.received += pcm.length;
    return first;
  }
  // Fill `out` with the frames from `now` on; silence before the start, after the end and while dry.
  pull(out, now) {
    let i = this.startAt === null ? out.length : Math.min(out.length, Math.max(0, this.startAt - now));
    out.fill(0, 0, i);
    if (this.playedFrom === null && i < out.length && this.queue.length) this.playedFrom = now + i;  // first sound
    while (i < out.length && this.queue.length) {
      const head = this.queue[0], n = Math.min(out.length - i, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), i);
      i += n; this.offset += n;
      if (this.offset === head.length) { this.queue.shift(); this.offset = 0; }
    }
    if (i < out.length) {
      out.fill(0, i);
      if (this.startAt !== null && now + i >= this.startAt && !this.ended && this.dryFrom === null) this.dryFrom = now + i;
    }
  }
  end() { this.ended = true; this.dryFrom = null; }
  drained() { return this.ended && this.queue.length === 0; }
  summary() {
    return {underruns: this.underruns, underrunMs: this.ms(this.dryFrames), worstGapMs: this.ms(this.worstDry),
            latenessMs: Number.isFinite(this.lateness) ? this.lateness : null, lead: this.trace.slice(0, 4096)};
  }
}
