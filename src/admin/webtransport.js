// The page's WebTransport player: the node's own listener protocol (proto/SPEC.md) over a
// WebTransport session on its QUIC port, Opus frames decoded by WebCodecs' AudioDecoder
// and played from a small jitter buffer in an AudioWorklet, into the <audio> element (its
// srcObject), whose controls start and stop it.
//
// - The page's <body> says where: data-wt-port (the node's QUIC port, on the page's host),
//   data-wt-hashes (SHA-256 of the short-lived certificates a self-signed node makes for
//   browsers: serverCertificateHashes; none where a CA signed the node's) and
//   data-wt-alternates (https://HOST:PORT of other nodes, tried in turn if this one is lost).
// - One control stream: HELLO (version 2, listener, the page's token), SUBSCRIBE (live, or
//   from the segment it was in after a reconnect; low latency). A segment per
//   unidirectional stream, read in the order they come; frames carry the origin's receive
//   time (wall_us): each decoded frame's latency from it is kept (p50/p99 in stats()).
// - The jitter buffer holds about JITTER_MS, more after each underrun (empty while playing:
//   silence until it holds its target again, counted), less after a calm while; held far
//   past its target it plays a little faster to catch up, past MAX_MS it skips to its
//   target (counted).
// - Lost: no frame for SILENCE_MS (or the session closed, or GOAWAY): it connects again, to
//   the next of the page's node and its alternates (those a GOAWAY names first), and resumes
//   from the segment it was in, skipping the frames it has, as `quicast listen URL URL`
//   does; a round of them all failed, it waits (growing, jittered) before the next round.
(() => {
  'use strict';
  if (window.QuicastWt) return;

  /** What the jitter buffer holds to start with. Then: the spread of the frames' arrival
   * (their latencies' range over the last 5 s: the tree delivers in batches, up to 200 ms by
   * default, every frame for its low-latency streams) plus JITTER_MARGIN_MS, at least
   * JITTER_MIN_MS; each underrun adds JITTER_STEP_MS on top (20 s without one takes half a
   * step off); never more than JITTER_MAX_MS. */
  const JITTER_MS = 120;
  const JITTER_MARGIN_MS = 30;
  const JITTER_MIN_MS = 40;
  const JITTER_STEP_MS = 30;
  const JITTER_MAX_MS = 400;
  /** Held past JITTER_MS + CATCH_UP_MS, it plays faster (drops a quantum in 8) to catch up;
   * past MAX_MS, it drops to JITTER_MS at once. */
  const CATCH_UP_MS = 150;
  const MAX_MS = 2000;
  /** A newcomer's first frames older than this are not played: it starts at the live edge,
   * with the newest of the join's burst in its jitter buffer (it plays at once). */
  const STALE_MS = JITTER_MS + 100;
  /** Silence after which the node is taken for lost (as `quicast listen`'s). */
  const SILENCE_MS = 1500;
  /** How long a segment whose header came waits for an earlier one (as the native client). */
  const HOLD_MS = 200;
  /** Segment streams held at most, waiting for their turn (as the native client). */
  const MAX_HELD = 32;
  /** Longest wait for a session before it has ever played (UDP blocked: the next way). */
  const CONNECT_MS = 3000;
  /** A newcomer's frames judged stale in a row past which its clock is taken to disagree with
   * the origin's (they are all played from then on). */
  const STALE_MAX = 100;
  /** Latencies kept for the stats: the last minute of 20 ms frames. */
  const KEEP = 3000;

  // ---- The wire: QUIC variable-length integers, messages, frames ----

  function varint(v) {
    if (v < 0x40) return [v];
    if (v < 0x4000) return [0x40 | (v >> 8), v & 0xff];
    if (v < 0x40000000) return [0x80 | (v >>> 24), (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];
    const hi = Math.floor(v / 2 ** 32), lo = v >>> 0;
    return [0xc0 | (hi >>> 24), (hi >> 16) & 0xff, (hi >> 8) & 0xff, hi & 0xff,
      lo >>> 24, (lo >> 16) & 0xff, (lo >> 8) & 0xff, lo & 0xff];
  }
  const bytes = b => [...varint(b.length), ...b];
  const utf8 = s => [...new TextEncoder().encode(s)];
  const message = (type, payload) => new Uint8Array([...varint(type), ...varint(payload.length), ...payload]);

  /** Bytes as they come on a stream, read from the front. */
  class Reader {
    constructor() { this.buf = new Uint8Array(0); this.at = 0; }
    push(chunk) {
      const rest = this.buf.subarray(this.at);
      const b = new Uint8Array(rest.length + chunk.length);
      b.set(rest);
      b.set(chunk, rest.length);
      this.buf = b;
      this.at = 0;
    }
    /** A varint, or null if it has not all come (nothing taken). */
    varint() {
      if (this.at >= this.buf.length) return null;
      const first = this.buf[this.at];
      const len = 1 << (first >> 6);
      if (this.at + len > this.buf.length) return null;
      let v = first & 0x3f;
      for (let i = 1; i < len; i++) v = v * 256 + this.buf[this.at + i];
      this.at += len;
      return v;
    }
    take(n) {
      if (this.at + n > this.buf.length) return null;
      const b = this.buf.subarray(this.at, this.at + n);
      this.at += n;
      return b;
    }
  }

  /** One control message from `r`, or null (nothing taken) until it has all come. */
  function nextMessage(r) {
    const start = r.at;
    const type = r.varint();
    const len = type === null ? null : r.varint();
    const payload = len === null ? null : r.take(len);
    if (payload === null) { r.at = start; return null; }
    const p = new Reader();
    p.push(payload);
    return { type, p };
  }
  const str = p => { const n = p.varint(); return new TextDecoder().decode(p.take(n)); };

  // ---- The jitter buffer ----

  const WORKLET = `
class QuicastJitter extends AudioWorkletProcessor {
  constructor(o) {
    super();
    const { channels, jitter, step, most, catchUp, max } = o.processorOptions;
    this.ch = channels; this.base = jitter; this.extra = 0; this.jitter = jitter;
    this.catchUp = catchUp; this.max = max; this.step = step; this.most = most; this.calm = 0;
    this.cap = sampleRate * 4;
    this.ring = Array.from({ length: channels }, () => new Float32Array(this.cap));
    this.r = 0; this.w = 0; this.level = 0;
    this.playing = false; this.first = false;
    this.underruns = 0; this.dropped = 0; this.played = 0;
    this.port.onmessage = e => {
      if (e.data.base !== undefined) { this.base = e.data.base; this.target(); } else this.put(e.data);
    };
    this.tick = 0;
  }
  put(planes) {
    const n = planes[0].length;
    if (this.level + n > this.cap) { this.skip(this.level + n - this.cap); }
    for (let c = 0; c < this.ch; c++) {
      const src = planes[Math.min(c, planes.length - 1)];
      for (let i = 0, w = this.w; i < n; i++, w = (w + 1) % this.cap) this.ring[c][w] = src[i];
    }
    this.w = (this.w + n) % this.cap;
    this.level += n;
    if (this.level > this.max) this.skip(this.level - this.jitter);
  }
  target() { this.jitter = Math.min(this.most, this.base + this.extra); }
  skip(n) { this.r = (this.r + n) % this.cap; this.level -= n; this.dropped += n; }
  process(_in, outputs) {
    const out = outputs[0];
    const n = out[0].length;
    if (!this.playing && this.level >= this.jitter) this.playing = true;
    if (this.playing && this.level < n) {
      this.playing = false;
      this.underruns++;
      this.extra += this.step;
      this.target();
      this.calm = 0;
    } else if ((this.calm += n) > sampleRate * 20) {
      this.calm = 0;
      this.extra = Math.max(0, this.extra - this.step / 2);
      this.target();
    }
    if (this.playing && this.level > this.jitter + this.catchUp + n && this.tick % 8 === 0) this.skip(n);
    if (this.playing) {
      for (let c = 0; c < out.length; c++) {
        const ring = this.ring[Math.min(c, this.ch - 1)];
        for (let i = 0, r = this.r; i < n; i++, r = (r + 1) % this.cap) out[c][i] = ring[r];
      }
      this.r = (this.r + n) % this.cap;
      this.level -= n;
      this.played += n;
      if (!this.first) { this.first = true; this.port.postMessage({ first: currentTime }); }
    }
    if (++this.tick % 64 === 0) {
      this.port.postMessage({ level: this.level, underruns: this.underruns, dropped: this.dropped, played: this.played, jitter: this.jitter });
    }
    return true;
  }
}
registerProcessor('quicast-jitter', QuicastJitter);
`;

  const hexBytes = h => new Uint8Array(h.match(/../g).map(x => parseInt(x, 16)));
  const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;

  /** Whether this browser can: WebTransport, AudioWorklet, and an AudioDecoder for Opus. */
  async function supported() {
    if (!window.WebTransport || !window.AudioDecoder || !window.AudioWorkletNode) return false;
    try {
      const s = await AudioDecoder.isConfigSupported({ codec: 'opus', sampleRate: 48000, numberOfChannels: 2 });
      return !!s.supported;
    } catch (e) {
      return false;
    }
  }

  class Player {
    constructor(audio, name, token, where) {
      this.audio = audio;
      this.name = name;
      this.token = token || '';
      this.nodes = [where.url, ...where.alternates];
      this.nodes0 = where.url;
      this.hashes = where.hashes;
      this.status = '';
      this.lat = [];
      this.gaps = 0;
      this.reconnects = 0;
      this.frames = 0;
      this.decodeErrors = 0;
      this.backwards = 0;
      this.staleRun = 0;
      this.jit = { level: 0, underruns: 0, dropped: 0, played: 0 };
      this.resume = null;
      this.staleRun = 0;
      this.run = null;
      audio.removeAttribute('src');
      audio.addEventListener('play', () => { if (!this.gone) this.start(); });
      audio.addEventListener('pause', () => {
        if (!audio.paused || this.gone) return;
        this.stop();
        // Nothing plays while paused: the buffer is not drained into an underrun.
        if (this.ctx) this.ctx.suspend().catch(() => {});
      });
    }

    /** The audio graph: decoded frames into the jitter buffer, out through the element. */
    async graph(channels) {
      if (this.making && this.channels === channels) return this.making;
      this.channels = channels;
      this.making = this.build(channels);
      return this.making;
    }

    async build(channels) {
      if (this.ctx) this.ctx.close();
      const ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
      this.ctx = ctx;
      const url = URL.createObjectURL(new Blob([WORKLET], { type: 'text/javascript' }));
      await ctx.audioWorklet.addModule(url);
      URL.revokeObjectURL(url);
      const node = new AudioWorkletNode(ctx, 'quicast-jitter', {
        numberOfInputs: 0,
        outputChannelCount: [channels],
        processorOptions: {
          channels, jitter: Math.round(48 * JITTER_MS), step: Math.round(48 * JITTER_STEP_MS), most: Math.round(48 * JITTER_MAX_MS),
          catchUp: Math.round(48 * CATCH_UP_MS), max: Math.round(48 * MAX_MS),
        },
      });
      node.port.onmessage = e => {
        if (e.data.first !== undefined) this.firstSound = performance.now() - this.pressed;
        else this.jit = e.data;
      };
      const dest = ctx.createMediaStreamDestination();
      node.connect(dest);
      this.node = node;
      this.audio.srcObject = dest.stream;
      this.audio.play().catch(() => {});
      await ctx.resume();
    }

    start() {
      if (this.run) return;
      if (this.pressed === undefined) this.pressed = performance.now();
      if (this.ctx) this.ctx.resume().catch(() => {});
      this.run = { stop: false };
      this.status = 'connecting';
      // The audio graph is made while the session connects (stereo until the stream says).
      this.graph(this.channels || 2).catch(e => console.warn('quicast audio:', String(e)));
      this.follow(this.run, 0);
    }

    stop() {
      if (!this.run) return;
      // Played again after a pause: from the live edge, not from where it was.
      this.resume = null;
      this.run.stop = true;
      if (this.run.wt) this.run.wt.close();
      this.run = null;
      this.status = '';
    }

    /** Connects to node `k` (of the page's node and its alternates) and plays; when it is
     * lost, the next one, from where it was. A browser that cannot, or that reaches no node
     * before it ever played (UDP blocked), falls back (`onFallback`). */
    async follow(run, k) {
      if (!(await supported())) return this.fallback('no Opus decoder');
      let failures = 0;
      this.k = k;
      while (!run.stop) {
        const url = this.nodes[this.k % this.nodes.length];
        let why;
        try {
          why = await this.session(run, url);
          failures = 0;
        } catch (e) {
          console.warn('quicast WebTransport:', url, String(e));
          failures++;
          if (e.fatal) { this.status = e.message; this.run = null; return; }
          if (!this.played && failures >= this.nodes.length) return this.fallback(String(e));
        }
        if (run.stop) return;
        this.reconnects++;
        // A broadcast that ended: the next one from the same node. A node lost: the next.
        if (why !== 'ended') this.k++;
        this.status = why === 'ended' ? 'ended' : 'reconnecting';
        // After a round of every node failed: waits growing to 10 s, each times a random
        // factor (0.5 to 1.5) so that a crowd cut off together does not come back together.
        if (failures >= this.nodes.length || why === 'ended') {
          const base = Math.min(10000, 250 * 2 ** Math.min(6, Math.max(0, failures - this.nodes.length)));
          await new Promise(r => setTimeout(r, base * (0.5 + Math.random())));
        }
      }
    }

    fallback(why) {
      console.warn('quicast WebTransport: not here (' + why + '): the next way');
      this.stop();
      this.gone = true;
      if (this.ctx) this.ctx.close();
      this.making = null;
      this.audio.srcObject = null;
      if (this.onFallback) this.onFallback(why);
    }

    /** One session: until it is lost or stopped. */
    async session(run, url) {
      const opts = {};
      // The hashes are this page's node's: another node (an alternate) has its own, or a
      // CA-signed certificate that a hash list would refuse.
      if (this.hashes.length && url === this.nodes0) {
        opts.serverCertificateHashes = this.hashes.map(h => ({ algorithm: 'sha-256', value: hexBytes(h) }));
      }
      const wt = new WebTransport(url, opts);
      run.wt = wt;
      const lost = new Promise(res => {
        wt.closed.then(() => res('closed'), e => res(String(e)));
      });
      if (this.played) {
        await wt.ready;
      } else {
        // Not played yet: a node that does not answer soon is not waited for (UDP may be
        // blocked here: LL-HLS over TCP is the next way).
        let t;
        const late = new Promise((_, no) => { t = setTimeout(() => no(new Error('no answer in ' + CONNECT_MS + ' ms')), CONNECT_MS); });
        try {
          await Promise.race([wt.ready, late]);
        } catch (e) {
          try { wt.close(); } catch (x) { /* not open */ }
          throw e;
        } finally {
          clearTimeout(t);
        }
      }
      const ctl = await wt.createBidirectionalStream();
      const w = ctl.writable.getWriter();
      const token = utf8(this.token);
      const start = this.resume ? [1, ...varint(this.resume.seq)] : [0];
      await w.write(message(0x01, [...varint(2), 1, ...bytes(token)]));
      await w.write(message(0x03, [1, ...bytes(utf8(this.name)), ...start, 1]));
      const s = { wt, heard: performance.now(), ended: false, codec: null, instance: null, ticks: 0 };
      // Resuming: the segment asked for comes first (a later one's header may come before it).
      if (this.resume) s.lastSeq = this.resume.seq - 1;
      let timer;
      const watch = new Promise(res => {
        timer = setInterval(() => {
          if (run.stop) res('stopped');
          else if (s.codec && !s.ended && performance.now() - s.heard > SILENCE_MS) res('silent');
          else if (++s.ticks % 10 === 0) this.spread();
        }, 100);
      });
      this.control(s, ctl.readable).catch(e => { s.failed = e; s.leave('refused: ' + e.message); });
      this.segments(s, wt.incomingUnidirectionalStreams).catch(() => {});
      const gone = new Promise(r => { s.leave = r; });
      const why = await Promise.race([lost, watch, gone]);
      clearInterval(timer);
      // What the old session's streams still deliver is not this player's any more.
      s.over = true;
      try { wt.close(); } catch (e) { /* closed */ }
      if (s.failed) throw s.failed;
      if (!s.codec) throw new Error(why);
      if (why !== 'stopped') console.warn('quicast WebTransport: session over:', why);
      return why;
    }

    async control(s, readable) {
      const r = new Reader();
      const reader = readable.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { s.leave('control stream ended'); return; }
        r.push(value);
        let m;
        while ((m = nextMessage(r))) {
          const p = m.p;
          if (m.type === 0x04) {
            p.varint();
            const instance = p.varint();
            const kind = p.varint(), rate = p.varint();
            const channels = p.take(1)[0];
            const head = p.take(p.varint());
            if (kind !== 1) throw Object.assign(new Error('not Opus'), { fatal: true });
            if (this.resume && this.resume.instance !== instance) this.resume = null;
            s.instance = instance;
            this.instance = instance;
            await this.decoder(s, rate, channels, head);
            s.codec = { rate, channels };
            this.played = true;
            s.heard = performance.now();
            this.status = '';
            this.segmentsReady && this.segmentsReady();
          } else if (m.type === 0x05 || m.type === 0x0a) {
            if (m.type === 0x05) p.varint();
            const code = p.varint();
            const reason = str(p);
            // Not allowed, not authorised: no other node says otherwise.
            const fatal = code === 2 || code === 7;
            throw Object.assign(new Error(reason), { fatal });
          } else if (m.type === 0x09) {
            // The broadcast ended: live again from its next one.
            s.ended = true;
            this.resume = null;
            this.status = 'ended';
            s.leave('ended');
          } else if (m.type === 0x0b) {
            // The node drains: the nodes it names (quic://HOST:PORT/...) come next.
            const next = [];
            for (let n = p.varint(); n > 0; n--) {
              const u = /^quic:\/\/([^/]+)/.exec(str(p));
              if (u) next.push('https://' + u[1] + '/');
            }
            this.nodes = [...new Set([...next, ...this.nodes])];
            this.k = -1;
            s.leave('going away');
          }
        }
      }
    }

    async decoder(s, rate, channels, head) {
      await this.graph(channels);
      if (this.dec && this.dec.state !== 'closed') this.dec.close();
      // The origin's receive stamps of the frames being decoded, in order (one output each).
      const times = [];
      this.times = times;
      this.dec = new AudioDecoder({
        output: d => {
          // Decoded in order, each frame once: a timestamp that does not move forward is
          // counted (the test asserts none).
          if (this.lastOut !== undefined && d.timestamp <= this.lastOut && this.lastInstance === this.instance) this.backwards++;
          this.lastOut = d.timestamp;
          this.lastInstance = this.instance;
          while (times.length > 1 && times[0][0] < d.timestamp) times.shift();
          const wall = times.length ? times.shift()[1] : undefined;
          if (wall !== undefined) {
            // The live stream's latency: the join's burst (older by design) is not counted.
            if (this.firstSound !== undefined && performance.now() - this.pressed > this.firstSound + 1000) {
              this.lat.push(nowUs() - wall);
              if (this.lat.length > KEEP) this.lat.splice(0, this.lat.length - KEEP);
            }
            this.last = wall;
          }
          const planes = [];
          for (let c = 0; c < d.numberOfChannels; c++) {
            const a = new Float32Array(d.numberOfFrames);
            d.copyTo(a, { planeIndex: c, format: 'f32-planar' });
            planes.push(a);
          }
          d.close();
          this.node.port.postMessage(planes, planes.map(a => a.buffer));
        },
        error: e => { this.decodeErrors++; console.warn('quicast decoder:', String(e)); },
      });
      this.dec.configure({ codec: 'opus', sampleRate: rate, numberOfChannels: channels, description: head });
    }

    /** Segment streams: each one's header read as it comes (side by side, so a slow one
     * holds up no other), then the segments handed on in order of `seq`: the next one in
     * order as soon as it is there, else the lowest waiting once it has waited HOLD_MS (the
     * node moved this listener on: skipped segments). */
    async segments(s, incoming) {
      const reader = incoming.getReader();
      s.waiting = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done || s.over) return;
        if (s.waiting.length >= MAX_HELD) { value.cancel().catch(() => {}); continue; }
        this.header(s, value).catch(() => {});
      }
    }

    async header(s, stream) {
      const reader = stream.getReader();
      const r = new Reader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || s.over) return;
        r.push(value);
        const type = r.varint(), id = type === null ? null : r.varint(), seq = id === null ? null : r.varint();
        if (seq !== null) {
          s.waiting.push({ seq, reader, r, at: performance.now() });
          s.waiting.sort((x, y) => x.seq - y.seq);
          if (!s.reading) this.drain(s);
          return;
        }
        r.at = 0;
      }
    }

    async drain(s) {
      s.reading = true;
      while (s.waiting.length && !s.over) {
        if (!s.codec) await new Promise(r => { this.segmentsReady = r; });
        const next = s.waiting[0];
        const expected = s.lastSeq === undefined || next.seq === s.lastSeq + 1;
        const held = performance.now() - next.at;
        if (!expected && held < HOLD_MS) {
          await new Promise(r => setTimeout(r, HOLD_MS - held));
          continue;
        }
        s.waiting.shift();
        if (s.lastSeq !== undefined && next.seq <= s.lastSeq) { next.reader.cancel().catch(() => {}); continue; }
        s.lastSeq = next.seq;
        this.seq = next.seq;
        try {
          await this.segment(s, next);
        } catch (e) {
          // Reset: the node moved this listener forward (whole segments, counted by seq).
        }
      }
      s.reading = false;
    }

    /** A segment's frames, as they come. */
    async segment(s, { seq, reader, r }) {
      for (;;) {
        for (;;) {
          const at = r.at;
          const len = r.varint();
          const pts = len === null ? null : r.varint();
          const dur = pts === null ? null : r.varint();
          const wall = dur === null ? null : r.varint();
          const payload = wall === null ? null : r.take(len);
          if (payload === null) { r.at = at; break; }
          this.frame(s, seq, pts, dur, wall, payload);
        }
        const { value, done } = await reader.read();
        if (done || s.over) return;
        r.push(value);
      }
    }

    frame(s, seq, pts, dur, wall, payload) {
      if (s.over) return;
      s.heard = performance.now();
      const res = this.resume;
      // A newcomer starts at the live edge: the burst of the segment so far is not played
      // (unless every frame looks stale: then the clocks disagree, and all are played).
      if (!res && !this.skewed && nowUs() - wall > STALE_MS * 1000) {
        this.stale = (this.stale || 0) + 1;
        if (++this.staleRun > STALE_MAX) this.skewed = true;
        else return;
      }
      this.staleRun = 0;
      // After a reconnect: the frames it has already played are skipped.
      if (res && res.instance === s.instance && pts <= res.pts) return;
      if (res && res.instance === s.instance && pts > res.pts + res.dur) this.gaps++;
      this.resume = { instance: s.instance, seq, pts, dur };
      const rate = s.codec.rate;
      const ts = Math.round(pts * 1e6 / rate);
      this.times.push([ts, wall]);
      if (this.times.length > 500) this.times.shift();
      this.frames++;
      try {
        this.dec.decode(new EncodedAudioChunk({ type: 'key', timestamp: ts, duration: Math.round(dur * 1e6 / rate), data: payload }));
      } catch (e) {
        this.decodeErrors++;
      }
    }

    /** The jitter buffer's base from how spread the frames' arrival is (the last 5 s). */
    spread() {
      const l = this.lat.slice(-250);
      if (l.length < 50 || !this.node) return;
      const ms = (Math.max(...l) - Math.min(...l)) / 1000 + JITTER_MARGIN_MS;
      const base = Math.min(JITTER_MAX_MS, Math.max(JITTER_MIN_MS, ms));
      this.node.port.postMessage({ base: Math.round(48 * base) });
    }

    /** Seconds behind live: the newest decoded frame's age, plus what the buffer holds. */
    behind() {
      if (!this.run || this.last === undefined) return null;
      return (nowUs() - this.last) / 1e6 + this.jit.level / 48000;
    }

    /** What the player has done: latencies (ms, origin receive to decoded), gaps, etc. */
    stats() {
      const l = [...this.lat].sort((a, b) => a - b);
      const q = f => l.length ? l[Math.min(l.length - 1, Math.floor(f * l.length))] / 1000 : null;
      return {
        frames: this.frames, p50: q(0.5), p99: q(0.99), max: q(1), gaps: this.gaps,
        underruns: this.jit.underruns, dropped: this.jit.dropped, played: this.jit.played,
        decodeErrors: this.decodeErrors, reconnects: this.reconnects, firstSound: this.firstSound,
        stale: this.stale || 0, backwards: this.backwards, jitterMs: (this.jit.jitter || 48 * JITTER_MS) / 48,
      };
    }
  }

  /** Where this page's node takes WebTransport (from <body>), or null. */
  function where() {
    const d = document.body && document.body.dataset;
    if (!d || !d.wtPort) return null;
    const list = v => (v || '').split(',').filter(Boolean);
    // An IPv6 host comes with its brackets.
    const host = location.hostname;
    return {
      url: 'https://' + host + ':' + d.wtPort + '/',
      hashes: list(d.wtHashes),
      alternates: list(d.wtAlternates),
    };
  }

  window.QuicastWt = { Player, supported, where };
})();
