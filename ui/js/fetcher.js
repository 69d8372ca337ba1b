// The player's Worker: it posts the form to the Generate route and splits the framed response (a uint32 sample count,
// then the float32 samples; 0 ends a complete stream) into chunks, which go to the sink's feed port as they come. The
// page gets only what it shows: the run's headers, a count per chunk, an error, and at the end a WAV of it all.
let current = null;

function wav(parts, rate) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (o, s) => { for (let i = 0; i < s.length; i++) view.setUint8(o + i, s.charCodeAt(i)); };
  text(0, 'RIFF'); view.setUint32(4, 36 + 2 * n, true); text(8, 'WAVEfmt ');
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, 'data'); view.setUint32(40, 2 * n, true);
  let o = 44;
  for (const p of parts) for (let i = 0; i < p.length; i++, o += 2)
    view.setInt16(o, Math.max(-1, Math.min(1, p[i])) * 32767, true);
  return new Blob([view], {type: 'audio/wav'});
}

async function run({id, url, form, feed, rate}) {
  const abort = new AbortController();
  current = {id, abort};
  const post = (message) => postMessage({id, ...message});
  const finish = (complete, error, parts) => {
    feed.postMessage({end: complete});
    post({type: 'end', complete, error, wav: parts && parts.length ? wav(parts, rate) : null});
  };
  let resp;
  try {
    resp = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'},
                             body: JSON.stringify(form), signal: abort.signal});
  } catch (err) { return finish(false, abort.signal.aborted ? null : 'The server could not be reached.'); }
  if (!resp.ok) {
    let message = 'The server refused the request (HTTP ' + resp.status + ').';
    try { message = (await resp.json()).error || message; } catch (e) {}
    return finish(false, message);
  }
  const served = parseInt(resp.headers.get('X-Sample-Rate') || '0');
  if (served !== rate) {
    abort.abort();
    return finish(false, `The server streams at ${served} Hz; this player plays ${rate} Hz.`);
  }
  post({type: 'headers', run: resp.headers.get('X-Run-Id')});
  const reader = resp.body.getReader(), parts = [];
  let buf = new Uint8Array(0), complete = false;
  try {
    while (!complete) {
      const {value, done} = await reader.read();
      if (done) break;
      const joined = new Uint8Array(buf.length + value.length);
      joined.set(buf); joined.set(value, buf.length);
      buf = joined;
      while (buf.length >= 4) {
        const n = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0, true);
        if (n === 0) { complete = true; break; }
        if (buf.length < 4 + 4 * n) break;
        const pcm = new Float32Array(buf.slice(4, 4 + 4 * n).buffer);
        buf = buf.slice(4 + 4 * n);
        parts.push(pcm);
        const copy = pcm.slice();
        feed.postMessage({pcm: copy}, [copy.buffer]);
        post({type: 'chunk', samples: pcm.length});
      }
    }
  } catch (err) {
    return finish(false, abort.signal.aborted ? null : 'The stream was cut.', parts);
  }
  finish(complete, complete ? null : 'The stream ended early.', parts);
}

onmessage = (e) => {
  if (current) current.abort.abort();  // one run at a time: a new one (or a stop) ends the last
  if (e.data.form) run(e.data);
  else current = null;
};
