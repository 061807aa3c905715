// The player of a node's page: for each <audio data-stream="NAME">, the best way this browser
// has to play the stream live.
//
// - Native HLS where the browser has its own (Safari, iOS): src = /NAME.m3u8.
// - Else Media Source Extensions with fMP4 Opus: the small low-latency HLS player below.
//   Chromium says it plays HLS too (its built-in player), but that one fails on these
//   streams (Chromium 156: DEMUXER_ERROR_COULD_NOT_PARSE): in Chromium (the browsers with
//   navigator.userAgentData) this player comes first. A native player that fails before it
//   played hands over to this one.
// - Else progressive Ogg Opus: src = /NAME.ogg.
// - MP3 and AAC streams (data-codec) play progressive (/NAME.mp3, /NAME.aac): every browser
//   plays both, and the node sends them as the encoder made them.
// Before all of these: WebTransport + WebCodecs where the browser has both and the node
// takes it (webtransport.js, inlined before this file); it hands over to the first of the
// others that fits if it cannot play.
//
// A stream that needs a listen token has it in data-token (the node puts the page's own
// `?token=` there once it has checked it): every URL asked for carries it.
//
// The path taken is in audio.dataset.path ('wt', 'hls', 'mse', 'ogg' or 'http'); `?player=ogg` (or
// mse, hls, wt) on the page's address forces one. An element with class "behind" in the stream's
// <li> shows, every second, how far behind live it plays.
//
// The MSE player follows the live edge of the LL-HLS playlist: it starts from the newest
// complete parts (PART-HOLD-BACK behind live), then asks for each next part by name
// (SEQ.K.m4s), one ahead of the part it waits for (the node holds a part request until the
// part is complete); a 404 on a part means its segment is over: (SEQ+1).0 is next. Anything
// else unexpected (an error, a stall, falling behind) re-reads the playlist and starts again
// from the live edge.
(() => {
  'use strict';
  if (window.quicastPlayer) {
    window.quicastPlayer.scan();
    return;
  }

  const HLS = 'application/vnd.apple.mpegurl';
  const MP4 = 'audio/mp4; codecs="opus"';
  /** Seconds of audio kept behind the play position. */
  const KEEP = 30;
  /** Seconds buffered ahead of the play position past which it jumps to the live edge. */
  const MAX_AHEAD = 3;
  /** Part requests in flight: the one awaited and the next (it waits on the node). */
  const DEPTH = 2;
  /** How often the playlist is read again while following, ms (clock anchor, lag check). */
  const REFRESH_MS = 10000;

  const sleep = ms => new Promise(r => setTimeout(r, ms));
  /** `url` with the listen token, if the stream needs one (data-token: the page's ?token=). */
  const withToken = (url, token) =>
    token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : url;

  function choose(audio) {
    const mse = !!window.MediaSource && MediaSource.isTypeSupported(MP4);
    const native = audio.canPlayType(HLS) !== '';
    const forced = new URLSearchParams(location.search).get('player');
    if (forced === 'hls' || forced === 'ogg' || (forced === 'mse' && mse)) return forced;
    if (native && !(mse && navigator.userAgentData)) return 'hls';
    if (mse) return 'mse';
    return 'ogg';
  }

  // ---- Playlists ----

  /** Attributes of a tag: KEY=VALUE,KEY="VALUE". */
  function attrs(v) {
    const out = {};
    const re = /([A-Z0-9-]+)=("[^"]*"|[^,]*)/g;
    let m;
    while ((m = re.exec(v))) out[m[1]] = m[2].replace(/^"|"$/g, '');
    return out;
  }

  /** Segment and part of a media URI: SEQ.m4s (part null) or SEQ.K.m4s. */
  function position(url) {
    const m = /\/(\d+)(?:\.(\d+))?\.m4s(?:\?|$)/.exec(url);
    return m ? { seq: +m[1], k: m[2] === undefined ? null : +m[2] } : null;
  }

  /** Whether position a comes after b (a segment comes after all of the one before). */
  function after(a, b) {
    if (!b) return true;
    if (a.seq !== b.seq) return a.seq > b.seq;
    return a.k !== null && b.k !== null && a.k > b.k;
  }

  /** What follows a position: the next part, or part 0 of the next segment. */
  function successor(p) {
    return p.k === null ? { seq: p.seq + 1, k: 0 } : { seq: p.seq, k: p.k + 1 };
  }

  /**
   * A media playlist: its init segment, the media it lists in order (parts where it lists
   * them, whole segments before), each with its wall-clock start where known (from
   * EXT-X-PROGRAM-DATE-TIME), the preload hint and whether the broadcast ended.
   */
  function parse(text, base) {
    const lines = text.split(/\r?\n/);
    if (lines[0].trim() !== '#EXTM3U') throw new Error('not a playlist');
    const pl = { init: null, target: 1, partTarget: 0, holdBack: 0, msn: 0, parts: 0, items: [], hint: null, ended: false };
    // The wall clock at the start of the next media; exact right after a date (else summed).
    let wall = null;
    let exact = false;
    let seg = null;
    const open = () => seg || (seg = { parts: [], dur: 0, wall });
    const item = (uri, dur, w) => {
      const url = new URL(uri, base).href;
      const i = Object.assign({ url, dur, wall: w, exact }, position(url));
      exact = false;
      return i;
    };
    for (const raw of lines) {
      const line = raw.trim();
      if (!line) continue;
      if (line[0] !== '#') {
        const s = open();
        seg = null;
        if (s.parts.length) {
          pl.items.push(...s.parts);
          pl.parts = Math.max(pl.parts, s.parts.length);
        } else {
          pl.items.push(item(line, s.dur, s.wall));
          if (wall !== null) wall += s.dur * 1000;
        }
        continue;
      }
      const c = line.indexOf(':');
      const tag = c < 0 ? line : line.slice(0, c);
      const v = c < 0 ? '' : line.slice(c + 1);
      switch (tag) {
        case '#EXT-X-TARGETDURATION': pl.target = +v || 1; break;
        case '#EXT-X-MEDIA-SEQUENCE': pl.msn = +v || 0; break;
        case '#EXT-X-PART-INF': pl.partTarget = +attrs(v)['PART-TARGET'] || 0; break;
        case '#EXT-X-SERVER-CONTROL': pl.holdBack = +attrs(v)['PART-HOLD-BACK'] || 0; break;
        case '#EXT-X-MAP': pl.init = new URL(attrs(v).URI, base).href; break;
        case '#EXT-X-ENDLIST': pl.ended = true; break;
        case '#EXT-X-PROGRAM-DATE-TIME': {
          const w = Date.parse(v);
          if (!isNaN(w)) {
            wall = w;
            exact = true;
            if (seg && !seg.parts.length) seg.wall = w;
          }
          break;
        }
        case '#EXTINF': open().dur = parseFloat(v) || 0; break;
        case '#EXT-X-PART': {
          const a = attrs(v);
          const dur = +a.DURATION || 0;
          const s = open();
          if (!s.parts.length) s.wall = wall;
          s.parts.push(item(a.URI, dur, wall));
          if (wall !== null) wall += dur * 1000;
          break;
        }
        case '#EXT-X-PRELOAD-HINT': {
          const a = attrs(v);
          if (a.TYPE === 'PART' && a.URI) pl.hint = position(new URL(a.URI, base).href);
          break;
        }
      }
    }
    if (seg && seg.parts.length) pl.items.push(...seg.parts);
    pl.items = pl.items.filter(i => i.seq !== undefined);
    if (!pl.holdBack) pl.holdBack = pl.partTarget ? 3 * pl.partTarget : 3 * pl.target;
    // Where the media is named: DIR/SEQ.K.m4s.
    const any = pl.items.length ? pl.items[pl.items.length - 1].url : pl.init;
    pl.dir = any ? any.slice(0, any.lastIndexOf('/') + 1) : null;
    return pl;
  }

  // ---- fMP4 ----

  /** Calls f(type, start, end) for each box in [from, to). */
  function boxes(dv, from, to, f) {
    for (let p = from; p + 8 <= to;) {
      let size = dv.getUint32(p);
      const type = String.fromCharCode(dv.getUint8(p + 4), dv.getUint8(p + 5), dv.getUint8(p + 6), dv.getUint8(p + 7));
      let head = 8;
      if (size === 1) {
        size = dv.getUint32(p + 8) * 2 ** 32 + dv.getUint32(p + 12);
        head = 16;
      } else if (size === 0) {
        size = to - p;
      }
      if (size < head || p + size > to) return;
      f(type, p + head, p + size);
      p += size;
    }
  }

  /** The timescale of an init segment's track (mdhd), 48000 if it cannot tell. */
  function timescale(buf) {
    const dv = new DataView(buf);
    let ts = 48000;
    const walk = (from, to) => boxes(dv, from, to, (t, s, e) => {
      if (t === 'moov' || t === 'trak' || t === 'mdia') walk(s, e);
      else if (t === 'mdhd') ts = dv.getUint32(s + (dv.getUint8(s) === 1 ? 20 : 12)) || ts;
    });
    walk(0, dv.byteLength);
    return ts;
  }

  /** Start and duration (seconds) of a fragment, from its tfdt and trun. */
  function timing(buf, ts) {
    const dv = new DataView(buf);
    let t = null;
    let d = 0;
    let dflt = 0;
    const walk = (from, to) => boxes(dv, from, to, (type, s, e) => {
      if (type === 'moof' || type === 'traf') return walk(s, e);
      const flags = dv.getUint32(s) & 0xffffff;
      if (type === 'tfhd') {
        let p = s + 8;
        if (flags & 0x1) p += 8;
        if (flags & 0x2) p += 4;
        if (flags & 0x8) dflt = dv.getUint32(p);
      } else if (type === 'tfdt') {
        t = dv.getUint8(s) === 1 ? dv.getUint32(s + 4) * 2 ** 32 + dv.getUint32(s + 8) : dv.getUint32(s + 4);
      } else if (type === 'trun') {
        const n = dv.getUint32(s + 4);
        let p = s + 8 + (flags & 0x1 ? 4 : 0) + (flags & 0x4 ? 4 : 0);
        const step = 4 * [0x100, 0x200, 0x400, 0x800].filter(b => flags & b).length;
        for (let i = 0; i < n && p <= e; i++, p += step) d += flags & 0x100 ? dv.getUint32(p) : dflt;
      }
    });
    walk(0, dv.byteLength);
    return t === null ? null : { t: t / ts, d: d / ts };
  }

  // ---- The MSE player ----

  class Player {
    constructor(audio, name, token) {
      this.audio = audio;
      this.token = token;
      this.url = new URL('/' + name + '.m3u8', document.baseURI).href;
      this.run = null;
      this.status = '';
      this.again = 0;
      this.restarts = 0;
      this.restarted = -Infinity;
      audio.preload = 'auto';
      this.setup();
      audio.addEventListener('play', () => this.start());
      audio.addEventListener('pause', () => {
        if (audio.paused) this.stop();
      });
      audio.addEventListener('error', () => {
        if (this.run) this.restart('media error ' + (audio.error && audio.error.code));
      });
      setInterval(() => this.tick(), 250);
    }

    /** A fresh MediaSource on the element. */
    setup() {
      const ms = new MediaSource();
      this.ms = ms;
      this.sb = null;
      this.init = null;
      this.ts = 48000;
      this.last = null;
      /** The origin's wall clock at a point of the media: {media (s), wall (ms)}. */
      this.anchor = null;
      this.times = new Map();
      /** Parts a segment has (the most seen): past them, a part is asked for alone. */
      this.parts = 0;
      this.ended = false;
      this.ops = Promise.resolve();
      this.opened = new Promise(res => ms.addEventListener('sourceopen', () => {
        try {
          ms.duration = Infinity;
        } catch (e) { /* live: it stays unknown */ }
        res();
      }, { once: true }));
      const old = this.audio.src;
      this.audio.src = URL.createObjectURL(ms);
      if (old.startsWith('blob:')) URL.revokeObjectURL(old);
    }

    start() {
      if (this.run) return;
      const run = { ac: new AbortController(), resync: false };
      this.run = run;
      this.status = 'connecting';
      this.follow(run);
    }

    stop() {
      clearTimeout(this.again);
      this.status = '';
      if (!this.run) return;
      this.run.ac.abort();
      this.run = null;
    }

    /** After a broken MediaSource or a new broadcast: all again, from the live edge (at
     * once the first time, then waiting longer each time it comes back soon). */
    restart(why) {
      console.warn('quicast player: starting again:', why);
      this.stop();
      const now = performance.now();
      this.restarts = now - this.restarted < 30000 ? this.restarts + 1 : 0;
      this.restarted = now;
      this.status = 'reconnecting';
      this.again = setTimeout(() => {
        this.setup();
        this.start();
        this.audio.play().catch(() => {});
      }, this.restarts ? Math.min(1000 * 2 ** this.restarts, 30000) : 0);
    }

    /** Queues an operation on the SourceBuffer; resolves when it is done. */
    op(f) {
      const sb = this.sb;
      const p = this.ops.then(() => new Promise((res, rej) => {
        const done = ok => () => {
          sb.removeEventListener('updateend', end);
          sb.removeEventListener('error', fail);
          ok ? res() : rej(new Error('SourceBuffer error'));
        };
        const end = done(true);
        const fail = done(false);
        sb.addEventListener('updateend', end);
        sb.addEventListener('error', fail);
        try {
          f(sb);
        } catch (e) {
          sb.removeEventListener('updateend', end);
          sb.removeEventListener('error', fail);
          rej(e);
        }
      }));
      this.ops = p.catch(() => {});
      return p;
    }

    async append(buf) {
      try {
        await this.op(sb => sb.appendBuffer(buf));
      } catch (e) {
        if (e.name !== 'QuotaExceededError') throw e;
        // Full: drop all but the last seconds, then once more.
        const t = this.audio.currentTime;
        const b = this.sb.buffered;
        if (b.length && t - 2 > b.start(0)) await this.op(sb => sb.remove(b.start(0), t - 2));
        await this.op(sb => sb.appendBuffer(buf));
      }
    }

    /** Appends media at `pos` (from the playlist or followed), and remembers it. */
    async add(item, buf) {
      await this.append(buf);
      this.last = { seq: item.seq, k: item.k };
      const f = timing(buf, this.ts);
      if (f) {
        // Where media starts in the buffer, to set the clock by a later playlist.
        this.times.set(item.seq + '.' + item.k, f.t);
        if (this.times.size > 100) this.times.delete(this.times.keys().next().value);
        if (item.wall !== null && item.wall !== undefined && (item.exact || !this.anchor)) {
          this.anchor = { media: f.t, wall: item.wall };
        }
      }
      return f;
    }

    async fetchOk(run, url, opts) {
      const r = await fetch(url, Object.assign({ signal: run.ac.signal }, opts));
      if (!r.ok) {
        const e = new Error(url + ': ' + r.status);
        e.status = r.status;
        throw e;
      }
      return r;
    }

    /** The playlist; with `at`, a blocking reload until that part exists. */
    async playlist(run, at) {
      const q = at ? '?_HLS_msn=' + at.seq + '&_HLS_part=' + (at.k || 0) : '';
      const url = withToken(this.url + q, this.token);
      const r = await this.fetchOk(run, url, at ? {} : { cache: 'no-cache' });
      return parse(await r.text(), r.url || this.url);
    }

    /**
     * Reads the playlist (blocking at `at` if given) and appends what it lists from
     * PART-HOLD-BACK behind live on (what was not appended already). Returns the next part.
     */
    async catchUp(run, at) {
      let pl = null;
      if (at) pl = await this.playlist(run, at).catch(e => { if (run.ac.signal.aborted) throw e; return null; });
      if (!pl) pl = await this.playlist(run, null);
      if (!pl.init || !pl.dir) throw new Error('playlist without media');
      if (this.init && this.init !== pl.init) {
        const e = new Error('a new broadcast');
        e.restart = true;
        throw e;
      }
      let from = pl.items.length;
      for (let held = 0; from > 0 && held < pl.holdBack - 0.001;) held += pl.items[--from].dur;
      const todo = (pl.ended ? pl.items : pl.items.slice(from)).filter(i => after(i, this.last));
      // Everything at once: the init segment (first time) and the parts.
      const get = url => this.fetchOk(run, url).then(r => r.arrayBuffer());
      const init = this.init ? null : get(pl.init);
      const media = todo.map(i => get(i.url));
      media.forEach(p => p.catch(() => {}));
      if (init) {
        const buf = await init;
        this.ts = timescale(buf);
        await this.opened;
        if (this.run !== run) throw new Error('stopped');
        if (!this.sb) this.sb = this.ms.addSourceBuffer(MP4);
        await this.append(buf);
        this.init = pl.init;
      }
      let first = null;
      for (let i = 0; i < todo.length; i++) {
        const f = await this.add(todo[i], await media[i]);
        if (first === null && f) first = f.t;
      }
      this.setClock(pl);
      // Start (or jump) at the newest media, unless playing it already.
      if (first !== null) this.seekTo(first, pl.holdBack);
      this.ended = pl.ended;
      this.dir = pl.dir;
      this.parts = Math.max(this.parts, pl.parts);
      this.pl = pl;
      let next = pl.hint || (pl.items.length ? successor(pl.items[pl.items.length - 1]) : { seq: pl.msn, k: 0 });
      if (this.last && !after(next, this.last)) next = successor(this.last);
      return next;
    }

    /** Puts the play position at `t` if it is not playing close to the live edge already. */
    seekTo(t, holdBack) {
      const a = this.audio;
      const b = a.buffered;
      if (!b.length) return;
      const end = b.end(b.length - 1);
      const now = a.currentTime;
      const inRange = [...Array(b.length).keys()].some(i => b.start(i) <= now && now < b.end(i));
      if (inRange && end - now <= holdBack + MAX_AHEAD / 2) return;
      for (let i = 0; i < b.length; i++) {
        if (t < b.end(i)) {
          a.currentTime = Math.max(t, b.start(i));
          return;
        }
      }
    }

    /** Follows the live edge until stopped. */
    async follow(run) {
      let next = null;
      let at = null;
      let failures = 0;
      let pending = [];
      let refreshed = performance.now();
      const request = pos => {
        const url = withToken(this.dir + pos.seq + '.' + pos.k + '.m4s', this.token);
        const p = fetch(url, { signal: run.ac.signal })
          .then(async r => ({ pos, status: r.status, buf: r.ok ? await r.arrayBuffer() : null }));
        p.catch(() => {});
        return { pos, p };
      };
      while (this.run === run) {
        try {
          if (!next || run.resync) {
            run.resync = false;
            pending = [];
            next = await this.catchUp(run, at);
            at = null;
            refreshed = performance.now();
            this.status = this.ended ? 'ended' : '';
            if (this.ended) {
              // Played to its end: a new broadcast of the stream plays when it starts.
              next = null;
              await sleep(3000);
              continue;
            }
          }
          // DEPTH part requests in flight, in order: the node holds each until it is complete.
          // Past the parts a segment usually has, one at a time (the one after is a 404).
          let ask = pending.length ? successor(pending[pending.length - 1].pos) : next;
          while (pending.length < DEPTH && !(pending.length && ask.k > this.parts)) {
            pending.push(request(ask));
            ask = successor(ask);
          }
          const { pos, status, buf } = await pending.shift().p;
          if (this.run !== run) return;
          if (status === 200) {
            await this.add(pos, buf);
            this.parts = Math.max(this.parts, pos.k + 1);
            next = successor(pos);
            // Back after a break: the clock again soon (the dates after it).
            if (failures) refreshed = performance.now() - REFRESH_MS + 3000;
            failures = 0;
            this.status = '';
          } else if (status === 404 && pos.k > 0) {
            // The segment is over: the first part of the next one (the parts asked for
            // past this one are not either).
            next = { seq: pos.seq + 1, k: 0 };
            pending = [];
          } else {
            // Not there, no more, or not in time: the playlist says where things are.
            throw Object.assign(new Error('part ' + pos.seq + '.' + pos.k + ': ' + status), { status });
          }
          if (performance.now() - refreshed > REFRESH_MS) {
            refreshed = performance.now();
            this.refresh(run, next);
          }
        } catch (e) {
          if (this.run !== run) return;
          if (e.restart || this.audio.error || (this.sb && this.ms.readyState !== 'open')) {
            this.restart(e.message);
            return;
          }
          failures++;
          if (failures > 2) this.status = e.status === 404 ? 'not live' : 'reconnecting';
          // Again from the playlist: the first time, held until the part that was expected
          // is there (a blocking reload); after that, as it is.
          at = failures === 1 && next && (e.status === 404 || e.status === 503) ? next : null;
          next = null;
          pending = [];
          await sleep(failures === 1 ? 0 : Math.min(250 * failures, 3000));
        }
      }
    }

    /** Sets the clock by the newest media held whose date the playlist gives. */
    setClock(pl) {
      for (const i of pl.items) {
        const t = this.times.get(i.seq + '.' + i.k);
        if (t !== undefined && i.exact) this.anchor = { media: t, wall: i.wall };
      }
    }

    /** Reads the playlist aside: a fresh clock anchor, and whether this fell behind live. */
    async refresh(run, next) {
      try {
        const pl = await this.playlist(run, null);
        if (this.run !== run) return;
        if (pl.init !== this.init) {
          run.resync = true;
          return;
        }
        this.setClock(pl);
        // Behind: what is listed past the next part is more than MAX_AHEAD seconds.
        let behind = 0;
        for (const i of pl.items) if (!after(next, i)) behind += i.dur;
        if (behind > MAX_AHEAD + pl.holdBack) run.resync = true;
      } catch (e) { /* the next one */ }
    }

    /** Every 250 ms: into the buffered media if stuck before or between it; not too far
     * behind it; not too much kept. */
    tick() {
      const a = this.audio;
      if (!this.sb || !this.run || a.paused || a.seeking || this.ms.readyState !== 'open') return;
      const b = this.sb.buffered;
      if (!b.length) return;
      const t = a.currentTime;
      const end = b.end(b.length - 1);
      const hold = this.pl ? this.pl.holdBack : 0.6;
      if (end - t > MAX_AHEAD + hold) {
        a.currentTime = end - hold;
        return;
      }
      if (a.readyState < 3) {
        // Waiting: before the first range, in a hole, or at the end of a range with more after.
        for (let i = 0; i < b.length; i++) {
          if (b.start(i) > t + 0.01) {
            const prevEnd = i > 0 ? b.end(i - 1) : -Infinity;
            if (t >= prevEnd - 0.1) a.currentTime = b.start(i);
            break;
          }
        }
      }
      if (t - b.start(0) > KEEP + 10 && !this.sb.updating) {
        const from = b.start(0);
        this.op(sb => sb.remove(from, t - KEEP)).catch(() => {});
      }
    }

    /** Seconds behind live: from the origin's wall clock when the playlist gave it, else
     * from what is buffered ahead. */
    behind() {
      const a = this.audio;
      if (!this.run || a.paused || !this.sb) return null;
      const b = this.sb.buffered;
      if (!b.length || a.currentTime < b.start(0)) return null;
      if (this.anchor) return (Date.now() - this.anchor.wall) / 1000 - (a.currentTime - this.anchor.media);
      return b.end(b.length - 1) - a.currentTime;
    }
  }

  // ---- The page ----

  /** Seconds behind live of a native HLS element (PROGRAM-DATE-TIME, where exposed). */
  function nativeBehind(a) {
    if (a.paused) return null;
    const d = a.getStartDate && a.getStartDate();
    if (d && !isNaN(d.getTime())) return (Date.now() - d.getTime()) / 1000 - a.currentTime;
    const s = a.seekable;
    return s.length ? s.end(s.length - 1) - a.currentTime : null;
  }

  /** At least this far behind: what an Ogg element holds ahead of what it plays. */
  function bufferedBehind(a) {
    if (a.paused) return null;
    const b = a.buffered;
    return b.length ? b.end(b.length - 1) - a.currentTime : null;
  }

  const shown = [];

  function attach(audio) {
    const name = audio.dataset.stream;
    if (!name || audio.dataset.path) return;
    const li = audio.closest('li');
    const s = { audio, label: li && li.querySelector('.behind') };
    const use = path => {
      audio.dataset.path = path;
      s.status = () => '';
      if (path === 'mse') {
        const p = new Player(audio, name, audio.dataset.token);
        s.behind = () => p.behind();
        s.status = () => p.status;
        return;
      }
      const src = new URL('/' + name + (path === 'hls' ? '.m3u8' : '.ogg'), document.baseURI).href;
      audio.src = withToken(src, audio.dataset.token);
      s.behind = path === 'hls' ? () => nativeBehind(audio) : () => bufferedBehind(audio);
    };
    const codec = audio.dataset.codec;
    if (codec === 'mp3' || codec === 'aac') {
      // A radio codec: progressive, as every browser plays it (the page's src already).
      audio.dataset.path = 'http';
      s.status = () => '';
      s.behind = () => bufferedBehind(audio);
      shown.push(s);
      return;
    }
    const forced = new URLSearchParams(location.search).get('player');
    const wt = window.QuicastWt && QuicastWt.where();
    if (wt && window.WebTransport && window.AudioDecoder && window.AudioWorkletNode && (!forced || forced === 'wt')) {
      // WebTransport + WebCodecs first, where the browser has them; if it cannot (no Opus
      // decoder, no node reached before it played), the next best way, at once.
      audio.dataset.path = 'wt';
      const p = new QuicastWt.Player(audio, name, audio.dataset.token, wt);
      audio.quicast = p;
      s.behind = () => p.behind();
      s.status = () => p.status;
      p.onFallback = () => {
        delete audio.dataset.path;
        use(choose(audio));
        audio.play().catch(() => {});
      };
      shown.push(s);
      return;
    }
    use(choose(audio));
    if (audio.dataset.path === 'hls') {
      // A browser that says it plays HLS but cannot play this: the next best way.
      let played = false;
      let wanted = false;
      audio.addEventListener('play', () => { wanted = true; });
      audio.addEventListener('timeupdate', () => { played = played || audio.currentTime > 0; });
      const failed = () => {
        if (played || audio.dataset.path !== 'hls') return;
        audio.removeEventListener('error', failed);
        use(window.MediaSource && MediaSource.isTypeSupported(MP4) ? 'mse' : 'ogg');
        if (wanted) audio.play().catch(() => {});
      };
      audio.addEventListener('error', failed);
    }
    shown.push(s);
  }

  /** Every second: how far behind live each stream plays (in data-behind too, seconds). */
  function show() {
    for (const s of shown) {
      const v = s.behind();
      const known = typeof v === 'number' && isFinite(v);
      const status = s.status();
      const text = status && status !== 'connecting' ? status : known ? Math.max(0, v).toFixed(1) + ' s behind live' : '';
      s.audio.dataset.behind = known ? v.toFixed(3) : '';
      if (s.label) s.label.textContent = text ? ' \u00b7 ' + text : '';
    }
  }

  /** Every few seconds: each stream's now-playing title, from /streams. */
  let titlesAt = 0;
  function titles() {
    if (Date.now() - titlesAt < 5000) return;
    titlesAt = Date.now();
    fetch(new URL('/streams', document.baseURI).href, { cache: 'no-store' })
      .then(r => r.ok ? r.json() : [])
      .then(list => {
        for (const st of list) {
          const li = document.querySelector('li[data-name="' + CSS.escape(st.name) + '"] .title');
          if (li && st.carried) li.textContent = st.title || '';
        }
      })
      .catch(() => {});
  }

  function scan() {
    document.querySelectorAll('audio[data-stream]').forEach(attach);
  }

  window.quicastPlayer = { scan };
  scan();
  setInterval(show, 1000);
  setInterval(titles, 5000);
})();
