// The AudioWorklet host of `Sink`: the fetching Worker posts each chunk straight to this processor's feed port, so
// neither arrival nor playback waits for the page's main thread (a plot being drawn stalls it for a second or two).
// To the page it posts 'start' (the frame the first sample played at) and, at the stream's end, 'summary'.
class SinkProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const {lead, rate} = options.processorOptions;
    this.sink = new Sink(lead, rate);
    this.stopped = false; this.started = false;
    this.port.onmessage = (e) => {
      if (e.data.feed) e.data.feed.onmessage = (m) => this.take(m.data);
      if (e.data.stop) this.stopped = true;
    };
  }
  take(m) {
    if (m.pcm) this.sink.push(m.pcm, currentFrame);
    else if ('end' in m) { this.sink.end(); this.port.postMessage({type: 'summary', ...this.sink.summary()}); }
  }
  process(inputs, outputs) {
    this.sink.pull(outputs[0][0], currentFrame);
    if (!this.started && this.sink.playedFrom !== null) {
      this.started = true;
      this.port.postMessage({type: 'start', frame: this.sink.playedFrom});
    }
    return !this.stopped && !this.sink.drained();
  }
}
registerProcessor('vx-sink', SinkProcessor);
