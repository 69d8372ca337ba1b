// The page's player (gr.HTML's js_on_load: `element`, `props` and `watch` are given; `props.value` is the status line
// the page's Generate event sets). At the click it starts the run over HTTP at once, from the form's values as the
// page last reported them (`vxFormValues`); Gradio's own dispatch of the click (25-45 ms on a 2-core CPU) no longer
// comes first. A Worker fetches the stream and feeds the sink (`Sink`: an AudioWorklet, else a ScriptProcessorNode),
// so a busy main thread neither delays nor starves playback. `window.vxPlayerStats` is read by the browser test.
const q = (sel) => element.querySelector(sel);
const RATE = __RATE__, ROUTE = new URL('__ROUTE__', location.href).href, FIELDS = __FIELDS__;
const HISTORY = 'vx-player-lateness', KEEP = 10;  // how late chunks came after the audio before them, last runs (ms)
const START_WAIT_MS = 5000;  // after its lead, how long a finished stream's first sound may take to play
const FALLBACK_BLOCK = 512;  // the ScriptProcessorNode's block (21 ms at 24 kHz) where there is no AudioWorklet
const blobUrl = (src) => URL.createObjectURL(new Blob([src], {type: 'text/javascript'}));
__SINK__
let ctx = null, worker = null, worklet = null, session = 0, active = null;
window.vxFormValues = window.vxFormValues || {};

function show(state, text) {
  const box = q('.vx-player'), status = q('.vx-status');
  if (box && state) box.dataset.state = state;
  if (status && text !== undefined) status.textContent = text;
}
function past() {
  try { const v = JSON.parse(localStorage.getItem(HISTORY) || '[]'); return Array.isArray(v) ? v : []; }
  catch (e) { return []; }
}
// The lead kept before the first sound: the lateness of the last runs (the second worst, so that one stall does not
// slow every later start) plus 15 ms; 60 ms before any run, at most 1 s.
function learnedMargin() {
  const p = past().sort((a, b) => b - a);
  const late = p.length === 0 ? 45 : p.length < 3 ? p[0] : p[1];
  return Math.min(1000, Math.max(15, late + 15));
}
function remember(lateness) {
  try { localStorage.setItem(HISTORY, JSON.stringify([...past(), lateness].slice(-KEEP))); } catch (e) {}
}

// The audio context, the Worker and the worklet are made once per page, so a click finds them ready. (Until a click
// resumes it, the context may stay suspended: browsers start audio only after a gesture.)
function setup() {
  if (ctx) return;
  ctx = new AudioContext({sampleRate: RATE, latencyHint: 0});
  worker = new Worker(blobUrl(__FETCHER__));
  worker.onmessage = (e) => { if (active && e.data.id === active.id) active.fromWorker(e.data); };
  worklet = ctx.audioWorklet ?
    ctx.audioWorklet.addModule(blobUrl(Sink.toString() + __WORKLET__)).then(() => true, () => false) :
    Promise.resolve(false);
}
// When the sample at `frame` (context clock) reaches the listener, on the page's clock (ms).
function heardAt(frame) {
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (ts && ts.contextTime > 0) return ts.performanceTime + (frame / RATE - ts.contextTime) * 1000;
  return performance.now() + (frame / RATE - ctx.currentTime + (ctx.outputLatency || ctx.baseLatency || 0)) * 1000;
}

// The sink for one run: the worklet where there is one, else a ScriptProcessorNode on this thread. `onEvent` gets
// 'start' (the frame the first sample played at) and 'summary' (at the stream's end).
async function attachSink(feed, lead, onEvent) {
  let node;
  if (await worklet) {
    node = new AudioWorkletNode(ctx, 'vx-sink', {numberOfInputs: 0, outputChannelCount: [1],
                                                 processorOptions: {lead, rate: RATE}});
    node.port.onmessage = (e) => onEvent(e.data);
    node.port.postMessage({feed}, [feed]);
  } else {
    const sink = new Sink(lead, RATE);
    let next = Math.round(ctx.currentTime * RATE) + FALLBACK_BLOCK, started = false;  // the next block's first frame
    node = ctx.createScriptProcessor(FALLBACK_BLOCK, 0, 1);
    node.onaudioprocess = (e) => {
      const at = Math.round(e.playbackTime * RATE);
      sink.pull(e.outputBuffer.getChannelData(0), at);
      next = at + FALLBACK_BLOCK;
      if (!started && sink.playedFrom !== null) { started = true; onEvent({type: 'start', frame: sink.playedFrom}); }
    };
    feed.onmessage = (e) => {
      if (e.data.pcm) sink.push(e.data.pcm, next);
      else if ('end' in e.data) { sink.end(); onEvent({type: 'summary', ...sink.summary()}); }
    };
  }
  node.connect(ctx.destination);
  return node;
}

// Run `form` and play it; resolves to the report for the page's Generate event (JSON).
function start(form, clickAt) {
  const id = ++session;
  if (active) active.stop();
  setup();
  if (ctx.state !== 'running') ctx.resume().catch(() => {});
  const lead = learnedMargin();
  const stats = {samples: 0, chunks: 0, underruns: 0, underrunMs: 0, worstGapMs: 0, firstSoundMs: null,
                 marginMs: lead, lead: [], done: false, error: null, early: false, host: null};
  element.vxStats = window.vxPlayerStats = stats;
  show('loading', 'Generating…');
  const replay = q('.vx-replay');
  if (replay) { replay.style.display = 'none'; replay.removeAttribute('src'); }
  const channel = new MessageChannel();
  worker.postMessage({id, url: ROUTE, form, feed: channel.port2, rate: RATE}, [channel.port2]);
  const report = new Promise((resolve) => {
    let run = null, ended = null, summary = null, node = null;
    let waited = null;
    const finish = () => {  // the stream's end, the sink's summary and (for audio) its first sound: all three
      if (stats.done || !ended || (stats.chunks > 0 && !summary)) return;
      if (stats.chunks > 0 && stats.firstSoundMs === null && ended.complete) {
        if (waited === null) waited = setTimeout(() => {  // audio that never starts: a page whose sound is blocked
          ended = {...ended, complete: false, error: 'The audio did not start playing: is sound blocked on this page?'};
          run = null; stats.firstSoundMs = 0; finish();
        }, lead + START_WAIT_MS);
        return;
      }
      clearTimeout(waited);
      if (summary) {
        Object.assign(stats, {underruns: summary.underruns, underrunMs: summary.underrunMs,
                              worstGapMs: summary.worstGapMs, lead: summary.lead});
        if (ended.complete && stats.chunks > 1 && summary.latenessMs !== null) remember(summary.latenessMs);
      }
      stats.error = ended.error; stats.done = true;
      if (ended.wav && replay) { replay.src = URL.createObjectURL(ended.wav); replay.style.display = 'block'; }
      if (run === null) {
        show('error', ended.error);
        return resolve(JSON.stringify({error: ended.error}));
      }
      show(ended.complete ? 'done' : 'error', ended.complete ?
        `Received ${(stats.samples / RATE).toFixed(2)} s in ${stats.chunks} chunk(s); the run's profile follows.` :
        'The stream ended early; the run\'s result follows.');
      resolve(JSON.stringify({run, heard: {
        first_sound_ms: stats.firstSoundMs || 0, chunks: stats.chunks, underruns: stats.underruns,
        underrun_total_ms: stats.underrunMs, worst_gap_ms: stats.worstGapMs, margin_ms: stats.marginMs,
        lead: stats.lead}}));
    };
    active = {
      id,
      stop() {
        clearTimeout(waited);
        worker.postMessage({stop: id});
        if (node) { if (node.port) node.port.postMessage({stop: true}); node.disconnect(); }
        resolve(JSON.stringify({replaced: true}));
      },
      fromWorker(m) {
        if (m.type === 'headers') run = m.run;
        else if (m.type === 'chunk') {
          stats.samples += m.samples; stats.chunks++;
          const first = stats.firstSoundMs === null ? '' : `, first sound ${stats.firstSoundMs.toFixed(0)} ms after the click`;
          show('playing', `Playing: ${(stats.samples / RATE).toFixed(2)} s received in ${stats.chunks} chunk(s)${first}.`);
        } else if (m.type === 'end') { ended = m; finish(); }
      },
    };
    attachSink(channel.port1, Math.round(lead * RATE / 1000), (m) => {
      if (id !== session) return;
      if (m.type === 'start') {
        stats.firstSoundMs = heardAt(m.frame) - clickAt;
        stats.outputLatencyMs = (ctx.outputLatency || ctx.baseLatency || 0) * 1000;
        finish();
      } else if (m.type === 'summary') { summary = m; finish(); }
    }).then((made) => {
      node = made;
      stats.host = made instanceof AudioWorkletNode ? 'worklet' : 'script';
      if (id !== session) { made.port && made.port.postMessage({stop: true}); made.disconnect(); }  // replaced meanwhile
    });
  });
  report.stats = stats;
  return report;
}

// The click's own time, and the run started at once from the form as the page last reported it. Gradio then calls
// `synthesize` once per click, in order, with the values it holds: the same form takes the click's run over; another
// (a field changed in the last instant) replaces it; a click that a later one has replaced is over.
const clicks = [], SAME = (form) => JSON.stringify(form, (k, v) => (v === null ? '' : v));  // a hidden field: null or ''
let clickCount = 0;
document.addEventListener('click', (e) => {
  if (!(e.target.closest && e.target.closest('#vx-generate'))) return;
  const values = window.vxFormValues;
  const form = FIELDS.every((n) => n in values) ? Object.fromEntries(FIELDS.map((n) => [n, values[n]])) : null;
  clicks.push({n: ++clickCount, at: e.timeStamp, key: form && SAME(form), report: form && start(form, e.timeStamp)});
  if (clicks.length > 16) clicks.shift();  // clicks Gradio never dispatched
  if (!form) { setup(); ctx.resume().catch(() => {}); }  // resumed within the gesture, for the start to come
}, true);

async function synthesize(form) {
  const click = clicks.shift();
  Object.assign(window.vxFormValues, form);
  if (click && click.n < clickCount) return JSON.stringify({replaced: true});
  if (click && click.report && click.key === SAME(form)) {
    click.report.stats.early = true;
    return click.report;
  }
  return start(form, click ? click.at : performance.now());
}
window.vxSynthesize = synthesize;
setup();
watch('value', () => { if (props.value) show(undefined, props.value); });
