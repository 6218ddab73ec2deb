// The mend operator UI: plain DOM, hash routing, and polling of the JSON API under /api.
// Every view is a function that builds its panels once and refreshes their bodies; polling
// stops when the route changes. Text from the server is only ever set as text, never as HTML.
'use strict';

(() => {
  // ---------------------------------------------------------------- DOM helpers
  const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'indeterminate']);

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    add(el, kids);
    return el;
  }

  function s(tag, attrs, ...kids) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setAttrs(el, attrs);
    add(el, kids);
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'style') Object.assign(el.style, v);
      else if (PROPS.has(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function add(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k == null || k === false) continue;
      el.append(k instanceof Node ? k : String(k));
    }
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const main = $('#main');

  // ---------------------------------------------------------------- formatting
  const fmtN = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));
  const shortId = (id) => (id ? '…' + String(id).slice(-8) : '—');
  const pad2 = (n) => String(n).padStart(2, '0');

  function dur(ms) {
    if (ms == null || !isFinite(ms)) return '—';
    ms = Math.max(0, ms);
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
    const sec = Math.round(ms / 1000);
    if (sec < 60) return `${sec} s`;
    const min = Math.floor(sec / 60);
    if (min < 60) return sec % 60 ? `${min} min ${sec % 60} s` : `${min} min`;
    const hr = Math.floor(min / 60);
    if (hr < 48) return min % 60 ? `${hr} h ${min % 60} min` : `${hr} h`;
    return `${Math.floor(hr / 24)} d ${hr % 24} h`;
  }

  const ago = (ms) => (ms == null ? '—' : `${dur(Date.now() - ms)} ago`);
  const stamp = (ms) => {
    if (ms == null) return '';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  };
  const clock = (ms) => {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  };
  const when = (ms) => h('time', { title: stamp(ms), datetime: ms ? new Date(ms).toISOString() : null }, ago(ms));

  // Outcome and state names to a colour family.
  function tone(name) {
    switch (String(name || '').split('.')[0]) {
      case 'ok': case 'exists': case 'done': case 'released': case 'approved': return 'good';
      case 'missing': case 'parked': case 'waiting': return 'warn';
      case 'failed': case 'trash': case 'error': case 'rejected': return 'bad';
      case 'retry': case 'limited': case 'paused': return 'retry';
      case 'filtered': return 'mute';
      default: return 'info';
    }
  }
  const pill = (text, t) => h('span', { class: `pill ${t || tone(text)}` }, text);

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const tokenKey = 'mend.token';
  let askedForToken = false;
  const getToken = () => localStorage.getItem(tokenKey) || '';

  async function api(path, opts = {}) {
    const headers = { Accept: 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
    } catch (e) {
      connection(false, 'Cannot reach mend serve. Is it running? Retrying…');
      throw new ApiError(0, 'cannot reach mend serve');
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (res.status === 401) {
      const msg = (data && data.error) || 'the server wants an API token';
      connection(true, `401 Unauthorized: ${msg}. Set the API token (top right).`);
      if (!askedForToken) {
        askedForToken = true;
        $('#token-box').open = true;
      }
      throw new ApiError(401, msg);
    }
    connection(true, null);
    if (!res.ok) {
      const msg = (data && data.error) || text.trim() || `${res.status} ${res.statusText}`;
      throw new ApiError(res.status, msg);
    }
    return data;
  }

  // An endpoint this server does not offer (yet): the router's fallback, an unknown action, or
  // a route that exists for other methods only.
  const unavailable = (e) =>
    e instanceof ApiError &&
    (e.status === 405 || e.status === 501 ||
      (e.status === 404 && /no such route|no trash action/i.test(e.message)));

  const q = (params) => {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v != null && v !== '') p.set(k, v);
    const str = p.toString();
    return str ? `?${str}` : '';
  };

  // ---------------------------------------------------------------- banner, live dot, toasts
  const banner = $('#banner');
  const live = $('#live');

  function connection(ok, message) {
    live.classList.toggle('down', !ok || !!message);
    live.textContent = ok && !message ? 'live' : ok ? 'auth' : 'offline';
    if (message) {
      banner.replaceChildren(message);
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  function toast(message, kind = 'good', link) {
    const el = h('div', { class: `toast ${kind}` }, message,
      link ? [' ', h('a', { href: link.href }, link.text)] : null);
    $('#toasts').append(el);
    setTimeout(() => el.remove(), kind === 'bad' ? 9000 : 5000);
  }

  // ---------------------------------------------------------------- panels and polling
  let generation = 0;

  // Calls `fn` now and every `ms` until the route changes; slower while the tab is hidden.
  function every(ms, fn) {
    const gen = generation;
    const tick = async () => {
      if (gen !== generation) return;
      try { await fn(); } catch (e) { console.warn(e); }
      if (gen === generation) setTimeout(tick, document.hidden ? ms * 5 : ms);
    };
    tick();
  }

  function panel(title, ...extra) {
    const body = h('div', { class: 'panel-body' }, h('p', { class: 'empty' }, 'Loading…'));
    const el = h('section', { class: 'panel' },
      h('header', null, h('h2', null, title), h('div', { class: 'panel-tools' }, extra)),
      body);
    return { el, body };
  }

  // Runs `load`, then `render(data)` into `body`; shows errors and missing endpoints in place.
  async function fill(body, load, render, what) {
    try {
      const data = await load();
      const content = render(data);
      if (content !== undefined) body.replaceChildren(...[content].flat());
      return data;
    } catch (e) {
      body.replaceChildren(problem(e, what));
      return undefined;
    }
  }

  function problem(e, what) {
    if (unavailable(e)) {
      return h('p', { class: 'note' }, `Not available yet: this server does not offer ${what || 'this view'}.`);
    }
    if (e instanceof ApiError && e.status === 401) {
      return h('p', { class: 'note bad' }, 'Unauthorized (401): set the API token at the top right.');
    }
    return h('p', { class: 'note bad' }, e.message || String(e));
  }

  const empty = (text) => h('p', { class: 'empty' }, text);

  // A stacked bar of a process's message counts.
  function progress(m) {
    const total = Math.max(m.total || 0, 1);
    const ended = (m.total || 0) - (m.open || 0);
    const running = Math.max((m.open || 0) - (m.parked || 0), 0);
    const seg = (n, cls, label) =>
      n > 0 ? h('span', { class: `seg ${cls}`, title: `${label}: ${fmtN(n)}`, style: { width: `${(100 * n) / total}%` } }) : null;
    return h('div', { class: 'progress', title: `${fmtN(ended)} of ${fmtN(m.total)} messages ended` },
      seg(m.done, 'good', 'done'),
      seg(m.filtered, 'mute', 'filtered'),
      seg(m.trash, 'bad', 'trash'),
      seg(m.rejected, 'rejected', 'rejected'),
      seg(m.parked, 'warn', 'parked'),
      seg(running, 'open', 'queued or running'));
  }

  function counts(m) {
    const parts = [h('b', null, `${fmtN((m.total || 0) - (m.open || 0))}/${fmtN(m.total)}`)];
    if (m.trash) parts.push(h('span', { class: 'c bad' }, `${fmtN(m.trash)} trash`));
    if (m.parked) parts.push(h('span', { class: 'c warn' }, `${fmtN(m.parked)} parked`));
    if (m.filtered) parts.push(h('span', { class: 'c mute' }, `${fmtN(m.filtered)} filtered`));
    if (m.rejected) parts.push(h('span', { class: 'c bad' }, `${fmtN(m.rejected)} rejected`));
    return h('span', { class: 'counts' }, parts);
  }

  const procLink = (id) => (id ? h('a', { class: 'mono', href: `#/processes/${id}`, title: id }, shortId(id)) : '—');

  function table(headers, rows, cls) {
    return h('div', { class: 'table-wrap' },
      h('table', { class: cls || null },
        h('thead', null, h('tr', null, headers.map((t) => h('th', null, t)))),
        h('tbody', null, rows)));
  }

  // ---------------------------------------------------------------- shared data
  let topologyCache = { at: 0, list: null };
  async function topologies(fresh) {
    if (!fresh && topologyCache.list && Date.now() - topologyCache.at < 30000) return topologyCache.list;
    const list = await api('/api/topologies');
    list.sort((a, b) => a.name.localeCompare(b.name));
    topologyCache = { at: Date.now(), list };
    return list;
  }

  // Badge counts in the nav, from /api/status, or from the trash and parked lists before it exists.
  let statusMissing = false;
  async function badges() {
    let trash = null;
    let parked = null;
    if (!statusMissing) {
      try {
        const st = await api('/api/status');
        trash = st.messages.trash;
        parked = st.messages.parked;
      } catch (e) {
        if (unavailable(e)) statusMissing = true;
        else throw e;
      }
    }
    if (statusMissing) {
      const [t, p] = await Promise.all([api('/api/trash?limit=1000'), api('/api/parked')]);
      trash = t.length;
      parked = p.reduce((n, k) => n + (k.parked || 0), 0);
    }
    setBadge('#badge-trash', trash);
    setBadge('#badge-parked', parked);
  }
  function setBadge(sel, n) {
    const el = $(sel);
    el.hidden = !n;
    el.textContent = n > 999 ? '999+' : String(n || '');
  }

  // ---------------------------------------------------------------- Overview
  function overview() {
    const stats = panel('Now');
    const running = panel('Running processes', h('a', { href: '#/processes?state=running' }, 'all'));
    const finished = panel('Recently finished', h('a', { href: '#/processes?state=done' }, 'all'));
    const parked = panel('Parked keys', h('a', { href: '#/parked' }, 'all'));
    const trash = panel('Latest in the trash', h('a', { href: '#/trash' }, 'all'));
    main.append(h('div', { class: 'page' },
      stats.el,
      h('div', { class: 'grid2' }, running.el, h('div', null, trash.el, parked.el)),
      finished.el));

    every(1500, () => Promise.all([
      fill(stats.body, () => api('/api/status'), statCards, 'GET /api/status'),
      fill(running.body, () => api('/api/processes?state=running&limit=50'), (list) =>
        list.length ? processRows(list, true) : empty('Nothing is running. Start an event from Topologies.'),
      'GET /api/processes'),
    ]));
    every(4000, () => Promise.all([
      fill(finished.body, () => api('/api/processes?state=done&limit=8'), (list) =>
        list.length ? processRows(list, false) : empty('No finished process yet.'), 'GET /api/processes'),
      fill(parked.body, () => api('/api/parked'), (keys) =>
        keys.length ? parkedMini(keys) : empty('Nothing is parked.')),
      fill(trash.body, () => api('/api/trash?limit=6'), (list) =>
        list.length ? trashMini(list) : empty('The trash is empty.')),
    ]));
  }

  function statCards(st) {
    const card = (label, n, t, href) =>
      h('a', { class: `stat ${n ? t : ''}`, href }, h('span', { class: 'stat-n' }, fmtN(n)), h('span', { class: 'stat-l' }, label));
    return h('div', { class: 'stats' },
      card('processes running', st.processes.running, 'info', '#/processes?state=running'),
      card('processes done', st.processes.done, '', '#/processes?state=done'),
      card('queued', st.messages.queued, 'info', '#/processes?state=running'),
      card('running', st.messages.running, 'info', '#/processes?state=running'),
      card('waiting to retry', st.messages.retry, 'retry', '#/processes?state=running'),
      card('limited', st.messages.limited, 'retry', '#/limiter'),
      card('parked', st.messages.parked, 'warn', '#/parked'),
      card('in the trash', st.messages.trash, 'bad', '#/trash'));
  }

  function processRows(list, live) {
    return h('ul', { class: 'plist' }, list.map((p) => h('li', { 'data-id': p.id },
      h('div', { class: 'plist-head' },
        h('a', { href: `#/processes/${p.id}` }, h('b', null, p.topology), ' · ', p.event),
        h('span', { class: 'mono dim', title: p.id }, shortId(p.id)),
        h('span', { class: 'dim' }, live ? `started ${ago(p.created_at)}` : `took ${dur(p.finished_at - p.created_at)}, ${ago(p.finished_at)}`)),
      progress(p.messages),
      counts(p.messages))));
  }

  function parkedMini(keys) {
    return h('ul', { class: 'mini' }, keys.slice(0, 6).map((k) => h('li', null,
      h('span', { class: 'mono' }, k.key),
      h('span', { class: 'c warn' }, `${fmtN(k.parked)} parked`),
      k.sync_pending_since ? h('span', { class: 'dim' }, `sync ${ago(k.sync_pending_since)}`) : h('span', { class: 'dim' }, 'no sync'))));
  }

  function trashMini(list) {
    return h('ul', { class: 'mini' }, list.map((t) => h('li', null,
      h('a', { href: `#/trash/${t.message_id}` }, `${t.topology} › ${t.node}`),
      h('span', { class: 'err clip', title: t.error || '' }, t.error || '(no error text)'),
      h('span', { class: 'dim' }, ago(t.at)))));
  }

  // ---------------------------------------------------------------- Topologies
  async function topologiesView(parts) {
    const side = h('nav', { class: 'tabs' }, empty('Loading…'));
    const content = h('div', { class: 'page' });
    main.append(h('div', { class: 'page' }, side, content));
    let list;
    try {
      list = await topologies(true);
    } catch (e) {
      side.replaceChildren(problem(e));
      return;
    }
    if (!list.length) {
      side.replaceChildren(empty('No topologies loaded. Put YAML files in the topologies directory and restart mend serve.'));
      return;
    }
    const name = parts[1] || list[0].name;
    side.replaceChildren(...list.map((t) => h('a', { href: `#/topologies/${encodeURIComponent(t.name)}`, class: t.name === name ? 'on' : null },
      h('b', null, t.name), h('small', null, `${t.nodes.length} nodes`))));
    const t = list.find((x) => x.name === name);
    if (!t) {
      content.append(h('p', { class: 'note bad' }, `No topology named ${name}.`));
      return;
    }

    const graph = panel('Graph', legend());
    graph.body.replaceChildren(h('div', { class: 'graph-wrap' }, drawGraph(t, list)));
    content.append(
      h('div', { class: 'title' }, h('h1', null, t.name), h('span', { class: 'mono dim', title: 'version (content hash)' }, t.version),
        h('a', { href: `#/processes?topology=${encodeURIComponent(t.name)}` }, 'processes'),
        h('a', { href: `#/trash?topology=${encodeURIComponent(t.name)}` }, 'trash')),
      t.description ? h('p', { class: 'lead' }, t.description) : null,
      graph.el,
      startForm(t));
  }

  function legend() {
    const item = (cls, label) => h('span', { class: 'lg' }, h('i', { class: cls }), label);
    return h('span', { class: 'legend' },
      item('lg-edge', 'edge (outcome)'), item('lg-resume', 'resume after release'),
      item('lg-detour', 'detour / send to another topology'), item('lg-gen', 'generated by requires'));
  }

  function startForm(t) {
    const events = t.events.filter((e) => !e.webhook);
    const p = panel('Start an event');
    if (!events.length) {
      p.body.replaceChildren(empty('Every event of this topology is a webhook; send it to /hooks/… with its token.'));
      return p.el;
    }
    const select = h('select', { id: 'start-event' }, events.map((e) => h('option', { value: e.name }, `${e.name} → ${e.node}${e.cron ? ` (cron ${e.cron})` : ''}`)));
    const data = h('textarea', { id: 'start-data', class: 'code', rows: 4, spellcheck: 'false' });
    data.value = '{}';
    const check = jsonCheck(data);
    const out = h('div', { class: 'start-out' });
    const go = h('button', { type: 'submit', class: 'primary' }, 'Start');
    const form = h('form', { class: 'start', onsubmit: async (ev) => {
      ev.preventDefault();
      const parsed = check();
      if (!parsed.ok) return;
      go.disabled = true;
      try {
        const r = await api(`/api/topologies/${encodeURIComponent(t.name)}/events/${encodeURIComponent(select.value)}`, { method: 'POST', body: parsed.value });
        out.replaceChildren('Started process ', procLink(r.process_id), '.');
        toast(`Started ${t.name} · ${select.value}.`, 'good', { href: `#/processes/${r.process_id}`, text: 'Watch it' });
      } catch (e) {
        out.replaceChildren(problem(e));
      } finally {
        go.disabled = false;
      }
    } },
    h('label', null, 'Event ', select),
    h('label', { class: 'grow' }, 'Data (JSON)', data, check.status),
    h('div', { class: 'row' }, go, out));
    p.body.replaceChildren(form);
    return p.el;
  }

  // Live JSON validation of a textarea. Returns a function giving {ok, value}; `.status` is the
  // element that says what is wrong.
  function jsonCheck(area, validate) {
    const status = h('div', { class: 'json-status' });
    const min = area.rows;
    const fit = () => { area.rows = Math.min(24, Math.max(min, area.value.split('\n').length + 1)); };
    area.addEventListener('input', fit);
    area.addEventListener('checked', fit);
    const run = () => {
      const text = area.value;
      try {
        const value = JSON.parse(text);
        const extra = validate ? validate(value) : null;
        if (extra) throw new SyntaxError(extra);
        status.className = 'json-status good';
        status.textContent = 'valid JSON';
        area.classList.remove('invalid');
        return { ok: true, value };
      } catch (e) {
        status.className = 'json-status bad';
        status.textContent = jsonError(e, text);
        area.classList.add('invalid');
        return { ok: false };
      }
    };
    area.addEventListener('input', () => { run(); area.dispatchEvent(new Event('checked')); });
    run();
    run.status = status;
    return run;
  }

  function jsonError(e, text) {
    let msg = e.message || String(e);
    const m = /at position (\d+)/.exec(msg);
    if (m && !/line \d+/.test(msg)) {
      const before = text.slice(0, Number(m[1]));
      const line = before.split('\n').length;
      const col = Number(m[1]) - before.lastIndexOf('\n');
      msg += ` (line ${line}, column ${col})`;
    }
    return msg;
  }

  // ---------------------------------------------------------------- topology graph (SVG)
  const NW = 164;
  const NH = 46;
  const GX = 60;
  const GY = 24;
  const PAD = 16;

  // Lays the graph out left to right: events in the first column, every other box one column
  // right of its furthest predecessor (back edges such as `resume` ignored), each column
  // ordered by the mean row of its predecessors. A detour leaves the topology: a ghost box for
  // the other topology's event sits right of the node that sends there.
  function drawGraph(t) {
    const items = new Map();
    const edges = [];
    const nodeId = (name) => `node:${name}`;
    for (const e of t.events) {
      items.set(`event:${e.name}`, { id: `event:${e.name}`, type: 'event', ev: e, w: NW - 40 });
      edges.push({ from: `event:${e.name}`, to: nodeId(e.node), label: '', cls: 'start' });
    }
    for (const n of t.nodes) {
      items.set(nodeId(n.name), { id: nodeId(n.name), type: 'node', node: n, w: NW });
    }
    for (const n of t.nodes) {
      for (const [outcome, to] of Object.entries(n.next || {})) {
        edges.push({ from: nodeId(n.name), to: nodeId(to), label: outcome, cls: `o-${tone(outcome)}` });
      }
      if (n.resume) edges.push({ from: nodeId(n.name), to: nodeId(n.resume), label: 'resume', cls: 'resume', back: true });
      const d = n.detour;
      if (d && d.topology) {
        const gid = `ghost:${d.topology}:${d.event || ''}`;
        if (!items.has(gid)) items.set(gid, { id: gid, type: 'ghost', detour: d, w: NW });
        edges.push({ from: nodeId(n.name), to: gid, label: n.kind === 'send' ? 'send' : 'detour', cls: 'detour', pair: n.kind === 'park' });
        if (n.kind === 'park') edges.push({ from: gid, to: nodeId(n.name), label: 'callback', cls: 'callback', back: true, pair: true });
      }
    }
    const live = edges.filter((e) => items.has(e.from) && items.has(e.to));

    // Edges that close a cycle (found by depth-first search from the events) do not set columns.
    const out = new Map();
    for (const e of live) if (!e.back) (out.get(e.from) || out.set(e.from, []).get(e.from)).push(e);
    const seen = new Map();
    const visit = (id) => {
      seen.set(id, 1);
      for (const e of out.get(id) || []) {
        if (seen.get(e.to) === 1) e.back = true;
        else if (!seen.has(e.to)) visit(e.to);
      }
      seen.set(id, 2);
    };
    for (const it of items.values()) if (it.type === 'event') visit(it.id);
    for (const id of items.keys()) if (!seen.has(id)) visit(id);
    for (const it of items.values()) it.col = it.type === 'event' ? 0 : 1;
    for (let round = 0; round < items.size; round++) {
      let moved = false;
      for (const e of live) {
        if (e.back) continue;
        const a = items.get(e.from);
        const b = items.get(e.to);
        if (a.col + 1 > b.col) { b.col = a.col + 1; moved = true; }
      }
      if (!moved) break;
    }

    // Rows: each box as close as it can to the mean height of its predecessors, without
    // overlapping the box above it; then the column moves as a block to that mean.
    const cols = [];
    for (const it of items.values()) (cols[it.col] ||= []).push(it);
    const preds = new Map();
    for (const e of live) {
      if (e.back) continue;
      (preds.get(e.to) || preds.set(e.to, []).get(e.to)).push(items.get(e.from));
    }
    const step = NH + GY;
    cols.forEach((col, c) => {
      if (!col) return;
      col.forEach((it, i) => {
        const ps = c === 0 ? [] : preds.get(it.id) || [];
        it.want = ps.length ? ps.reduce((sum, p) => sum + p.y, 0) / ps.length : i * step;
        it.order = i;
      });
      col.sort((p, q) => p.want - q.want || p.order - q.order);
      let y = -Infinity;
      for (const it of col) { it.y = Math.max(it.want, y + step); y = it.y; }
      const shift = col.reduce((sum, it) => sum + it.want - it.y, 0) / col.length;
      for (const it of col) { it.y += shift; it.x = c * (NW + GX); }
    });
    const colTop = [];
    const colBottom = [];
    cols.forEach((col, c) => {
      if (!col) return;
      colTop[c] = Math.min(...col.map((it) => it.y));
      colBottom[c] = Math.max(...col.map((it) => it.y + NH));
    });
    const width = cols.length * NW + (cols.length - 1) * GX;
    let top = Math.min(...colTop.filter((v) => v != null));
    let bottom = Math.max(...colBottom.filter((v) => v != null));

    const edgeEls = [];
    const labelEls = [];
    const label = (e, x, y) => {
      if (!e.label) return;
      const w = e.label.length * 6.3 + 12;
      labelEls.push(s('g', { class: `elabel ${e.cls}`, transform: `translate(${x - w / 2},${y - 8})` },
        s('rect', { width: w, height: 16, rx: 8 }), s('text', { x: w / 2, y: 11.5 }, e.label)));
    };
    let lane = 0;
    for (const e of live) {
      const a = items.get(e.from);
      const b = items.get(e.to);
      let d;
      if (e.pair) {
        // Detour out (upper) and callback back (lower) as two parallel curves.
        const [l, r] = a.col < b.col ? [a, b] : [b, a];
        const dy = e.back ? 7 : -7;
        const x1 = l.x + l.w;
        const y1 = l.y + NH / 2 + dy;
        const x2 = r.x;
        const y2 = r.y + NH / 2 + dy;
        const c = Math.max((x2 - x1) / 2, 24);
        d = e.back
          ? `M${x2},${y2} C${x2 - c},${y2} ${x1 + c},${y1} ${x1},${y1}`
          : `M${x1},${y1} C${x1 + c},${y1} ${x2 - c},${y2} ${x2},${y2}`;
        label(e, (x1 + x2) / 2, (y1 + y2) / 2 + (e.back ? 10 : -10));
      } else if (a === b) {
        const x = a.x + a.w / 2;
        const y = a.y + NH;
        d = `M${x + 10},${y} C${x + 30},${y + 34} ${x - 30},${y + 34} ${x - 10},${y}`;
        label(e, x, y + 28);
        bottom = Math.max(bottom, y + 40);
      } else if (a.col === b.col) {
        // Same column: straight between neighbours, else a bracket on the left.
        const up = b.y < a.y;
        const [p, q] = up ? [b, a] : [a, b];
        const between = cols[a.col].some((it) => it.y > p.y && it.y < q.y);
        if (!between) {
          const x = a.x + a.w / 2;
          d = up ? `M${x},${a.y} L${x},${b.y + NH}` : `M${x},${a.y + NH} L${x},${b.y}`;
          label(e, x + e.label.length * 3.2 + 14, (p.y + NH + q.y) / 2);
        } else {
          const x = a.x;
          const y1 = a.y + NH / 2;
          const y2 = b.y + NH / 2;
          d = `M${x},${y1} C${x - 40},${y1} ${x - 40},${y2} ${x},${y2}`;
          label(e, x - 30, (y1 + y2) / 2);
        }
      } else if (!e.back && b.col > a.col) {
        const x1 = a.x + a.w;
        const y1 = a.y + NH / 2;
        const x2 = b.x;
        const y2 = b.y + NH / 2;
        const c = Math.max((x2 - x1) / 2, 30);
        d = `M${x1},${y1} C${x1 + c},${y1} ${x2 - c},${y2} ${x2},${y2}`;
        if (b.col - a.col > 1) label(e, x2 - GX / 2, y2 - (y2 - y1) * 0.05);
        else label(e, (x1 + x2) / 2, (y1 + y2) / 2);
      } else {
        // A back edge: around the boxes of the columns it spans, above them when both ends
        // are the top box of their column, otherwise below.
        const lo = Math.min(a.col, b.col);
        const hi = Math.max(a.col, b.col);
        const up = a.y === colTop[a.col] && b.y === colTop[b.col] && !(a.y + NH === colBottom[a.col] && b.y + NH === colBottom[b.col]);
        let edge = up ? Infinity : -Infinity;
        for (let c = lo; c <= hi; c++) {
          if (colTop[c] == null) continue;
          edge = up ? Math.min(edge, colTop[c]) : Math.max(edge, colBottom[c]);
        }
        const far = up ? edge - 22 - 14 * lane++ : edge + 22 + 14 * lane++;
        const sgn = up ? -1 : 1;
        const x1 = a.x + a.w / 2 + 14;
        const x2 = b.x + b.w / 2 - 14;
        const y1 = up ? a.y : a.y + NH;
        const y2 = up ? b.y : b.y + NH;
        const r = 12;
        const dir = Math.sign(x2 - x1) || 1;
        d = `M${x1},${y1} L${x1},${far - sgn * r} Q${x1},${far} ${x1 + dir * r},${far} L${x2 - dir * r},${far} Q${x2},${far} ${x2},${far - sgn * r} L${x2},${y2}`;
        label(e, (x1 + x2) / 2, far);
        if (up) top = Math.min(top, far - 10);
        else bottom = Math.max(bottom, far + 10);
      }
      edgeEls.push(s('path', { d, class: `edge ${e.cls}`, 'marker-end': `url(#arrow-${markerFor(e.cls)})` }));
    }

    const boxes = [...items.values()].map((it) => nodeBox(it, t));
    const W = width + PAD * 2;
    const H = bottom - top + PAD * 2;
    return s('svg', { class: 'graph', id: 'graph', width: W, height: H, viewBox: `${-PAD} ${top - PAD} ${W} ${H}`, role: 'img', 'aria-label': `graph of topology ${t.name}`, style: { minWidth: `${Math.round(W * 0.85)}px` } },
      s('defs', null, ['edge', 'resume', 'detour'].map((k) =>
        s('marker', { id: `arrow-${k}`, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
          s('path', { d: 'M0,0 L10,5 L0,10 z', class: `arrow ${k}` })))),
      edgeEls, boxes, labelEls);
  }

  const markerFor = (cls) => (cls === 'resume' ? 'resume' : cls === 'detour' || cls === 'callback' ? 'detour' : 'edge');

  // A generated node is named `node.requirement.kind`; its box shows the part after `node.`.
  const nodeLabel = (n) => {
    const base = n.origin ? n.origin.split('.')[0] : null;
    return base && n.name.startsWith(`${base}.`) && n.name.length > 22 ? n.name.slice(base.length + 1) : n.name;
  };

  const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

  function nodeBox(it, t) {
    if (it.type === 'event') {
      const e = it.ev;
      const sub = e.cron ? `cron ${e.cron}` : e.webhook ? 'webhook' : 'start event';
      return s('g', { class: 'gnode event', transform: `translate(${it.x},${it.y})` },
        s('title', null, `start event ${e.name} → ${e.node}`),
        s('rect', { width: it.w, height: NH, rx: NH / 2 }),
        s('text', { x: 16, y: 19, class: 'name' }, `▶ ${clip(e.name, 16)}`),
        s('text', { x: 16, y: 34, class: 'sub' }, clip(sub, 18)));
    }
    if (it.type === 'ghost') {
      const d = it.detour;
      const go = () => { location.hash = `#/topologies/${encodeURIComponent(d.topology)}`; };
      return s('g', { class: 'gnode ghost', transform: `translate(${it.x},${it.y})`, tabindex: 0, onclick: go, onkeydown: (ev) => { if (ev.key === 'Enter') go(); } },
        s('title', null, `another topology: ${d.topology}, event ${d.event || '?'}${d.node ? ` (node ${d.node})` : ''}`),
        s('rect', { width: it.w, height: NH, rx: 8 }),
        s('text', { x: 12, y: 19, class: 'name' }, `⇢ ${clip(d.topology, 19)}`),
        s('text', { x: 12, y: 34, class: 'sub' }, clip(`event ${d.event || '?'}${d.node ? ` → ${d.node}` : ''}`, 24)));
    }
    const n = it.node;
    const go = () => { location.hash = `#/trash?topology=${encodeURIComponent(t.name)}&node=${encodeURIComponent(n.name)}`; };
    const edgesText = Object.entries(n.next || {}).map(([o, to]) => `${o} → ${to}`).join(', ');
    return s('g', { class: `gnode node k-${n.kind}${n.origin ? ' generated' : ''}`, 'data-node': n.name, transform: `translate(${it.x},${it.y})`, tabindex: 0, onclick: go, onkeydown: (ev) => { if (ev.key === 'Enter') go(); } },
      s('title', null, `${n.name} (${n.kind})${n.origin ? `\ngenerated by requires on ${n.origin}` : ''}${edgesText ? `\n${edgesText}` : ''}\nclick: trash of this node`),
      s('rect', { width: it.w, height: NH, rx: 7 }),
      s('rect', { width: 5, height: NH - 12, x: 6, y: 6, rx: 2.5, class: 'stripe' }),
      s('text', { x: 18, y: 19, class: 'name' }, clip(nodeLabel(n), 22)),
      s('text', { x: 18, y: 34, class: 'sub' }, n.origin ? `${n.kind} · generated` : n.kind));
  }

  // ---------------------------------------------------------------- Processes
  function processesView(parts, query) {
    if (parts[1]) return processPage(parts[1]);
    const topo = h('select', { name: 'topology' }, h('option', { value: '' }, 'all topologies'));
    const state = h('select', { name: 'state' },
      ['', 'running', 'done'].map((v) => h('option', { value: v, selected: query.get('state') === v }, v || 'any state')));
    const apply = () => { location.hash = `#/processes${q({ topology: topo.value, state: state.value })}`; };
    topo.addEventListener('change', apply);
    state.addEventListener('change', apply);
    topologies().then((list) => {
      topo.append(...list.map((t) => h('option', { value: t.name, selected: query.get('topology') === t.name }, t.name)));
    }).catch(() => {});
    const p = panel('Processes', h('form', { class: 'filters' }, topo, state));
    main.append(h('div', { class: 'page' }, p.el));
    const url = `/api/processes${q({ topology: query.get('topology'), state: query.get('state'), limit: 200 })}`;
    every(2000, () => fill(p.body, () => api(url), (list) => list.length
      ? table(['process', 'topology · event', 'state', 'started', 'duration', 'progress', 'messages', 'parent'],
        list.map((r) => h('tr', { 'data-id': r.id },
          h('td', null, procLink(r.id)),
          h('td', null, h('b', null, r.topology), ' · ', r.event),
          h('td', null, pill(r.state)),
          h('td', null, when(r.created_at)),
          h('td', null, dur((r.finished_at || Date.now()) - r.created_at)),
          h('td', { class: 'w-bar' }, progress(r.messages)),
          h('td', null, counts(r.messages)),
          h('td', null, r.parent_process_id ? procLink(r.parent_process_id) : '—'))))
      : empty('No process matches.'), 'GET /api/processes (the process list)'));
  }

  function processPage(id) {
    const head = h('div', { class: 'title' }, h('h1', null, 'Process ', h('span', { class: 'mono' }, shortId(id))));
    const crumbs = h('p', { class: 'crumbs' }, h('a', { href: '#/processes' }, '← processes'),
      h('a', { href: `#/trash?process_id=${encodeURIComponent(id)}` }, 'its trash'));
    const summary = panel('Report');
    const nodesP = panel('Outcomes per node');
    const trashP = panel('In the trash');
    const kids = panel('Child processes');
    const trace = panel('Trace', h('span', { class: 'dim' }, 'every message of this process and the processes it opened, on one time axis'));
    main.append(h('div', { class: 'page' }, crumbs, head, summary.el, h('div', { class: 'grid2' }, nodesP.el, h('div', null, trashP.el, kids.el)), trace.el));

    let done = false;
    let lastTrace = 0;
    every(1500, async () => {
      if (done) return;
      const r = await fill(summary.body, () => api(`/api/processes/${encodeURIComponent(id)}`), (r) => reportSummary(r, head));
      if (!r) return;
      nodesP.body.replaceChildren(nodeTable(r.nodes));
      trashP.body.replaceChildren(r.trash.length ? trashMini(r.trash.map((t) => ({ ...t, topology: r.topology }))) : empty('Nothing of this process is in the trash.'));
      kids.body.replaceChildren(r.children.length ? h('ul', { class: 'mini' }, r.children.map((c) => h('li', null, procLink(c)))) : empty('This process started no other process.'));
      if (r.state === 'done' || Date.now() - lastTrace > 4000) {
        lastTrace = Date.now();
        await fill(trace.body, () => api(`/api/processes/${encodeURIComponent(id)}/trace`), traceView, 'GET /api/processes/{id}/trace');
      }
      done = r.state === 'done';
    });
  }

  function reportSummary(r, head) {
    head.replaceChildren(
      h('h1', null, r.topology, ' · ', r.event),
      h('span', { class: `pill big ${tone(r.state)}`, id: 'proc-state', 'data-state': r.state }, r.state),
      h('span', { class: 'mono dim', title: 'process id' }, r.id));
    const m = r.messages;
    return h('div', null,
      h('dl', { class: 'facts' },
        h('dt', null, 'started'), h('dd', null, stamp(r.created_at), ' (', when(r.created_at), ')'),
        h('dt', null, r.finished_at ? 'finished' : 'running for'),
        h('dd', null, r.finished_at ? [stamp(r.finished_at), ` after ${dur(r.finished_at - r.created_at)}`] : dur(Date.now() - r.created_at)),
        r.parent_process_id ? [h('dt', null, 'started by'), h('dd', null, procLink(r.parent_process_id))] : null,
        r.release_key ? [h('dt', null, 'syncs key'), h('dd', null, h('span', { class: 'mono' }, r.release_key), ' (its clean end releases the key)')] : null,
        h('dt', null, 'version'), h('dd', { class: 'mono' }, r.version)),
      progress(m),
      h('div', { class: 'mcounts' },
        [['total', m.total, 'info'], ['open', m.open, 'info'], ['done', m.done, 'good'], ['filtered', m.filtered, 'mute'],
          ['parked', m.parked, 'warn'], ['trash', m.trash, 'bad'], ['rejected', m.rejected, 'bad']]
          .map(([l, n, t]) => h('span', { class: `mc ${n ? t : ''}` }, h('b', null, fmtN(n || 0)), ` ${l}`))));
  }

  function nodeTable(nodes) {
    const rows = Object.entries(nodes || {});
    if (!rows.length) return empty('No step has finished yet.');
    return table(['node', 'outcomes'], rows.map(([node, outs]) => h('tr', null,
      h('td', null, h('b', null, node)),
      h('td', null, Object.entries(outs).map(([o, n]) => h('span', { class: `pill ${tone(o)}` }, `${o} ${fmtN(n)}`))))));
  }

  function traceView(tr) {
    const procs = [...tr.processes].sort((a, b) => a.created_at - b.created_at);
    const msgs = [...tr.messages].sort((a, b) => a.created_at - b.created_at);
    if (!msgs.length) return empty('No message yet.');
    const t0 = Math.min(...procs.map((p) => p.created_at), ...msgs.map((m) => m.created_at));
    const t1 = Math.max(t0 + 1, ...msgs.map((m) => m.updated_at || m.created_at),
      ...procs.map((p) => p.finished_at || (p.state === 'running' ? Date.now() : p.created_at)));
    const span = t1 - t0;
    const pos = (t) => `${(100 * (t - t0)) / span}%`;
    const LIMIT = 400;
    const axis = h('div', { class: 'tl-row tl-axis' }, h('div', { class: 'tl-label' }, `${procs.length} process${procs.length === 1 ? '' : 'es'}, ${fmtN(msgs.length)} messages`),
      h('div', { class: 'tl-track' }, [0, 0.25, 0.5, 0.75, 1].map((f) => h('span', { class: 'tick', style: { left: `${f * 100}%` } }, `+${dur(f * span)}`))));
    const rows = [axis];
    let shown = 0;
    for (const p of procs) {
      const own = msgs.filter((m) => m.process_id === p.id);
      rows.push(h('div', { class: 'tl-row tl-proc' },
        h('div', { class: 'tl-label' }, h('a', { href: `#/processes/${p.id}` }, h('b', null, p.topology), ' · ', p.event), ' ', pill(p.state)),
        h('div', { class: 'tl-track' }, h('span', { class: `tl-span ${tone(p.state)}`, style: { left: pos(p.created_at), width: `max(2px, calc(${pos(p.finished_at || t1)} - ${pos(p.created_at)}))` } }))));
      for (const m of own) {
        if (shown++ >= LIMIT) break;
        const t = m.state === 'done' ? tone(m.outcome || 'ok') : tone(m.state);
        const end = m.updated_at || m.created_at;
        const label = m.state === 'done' ? (m.outcome || 'done') : m.outcome ? `${m.state} (${m.outcome})` : m.state;
        rows.push(h('div', { class: 'tl-row' },
          h('div', { class: 'tl-label', title: m.node }, h('span', { class: 'tl-node' }, m.node), h('span', { class: `c ${t}` }, label)),
          h('div', { class: 'tl-track', title: `${m.node}: ${label}\n${stamp(m.created_at)} → ${stamp(end)} (${dur(end - m.created_at)})${m.error ? `\n${m.error}` : ''}` },
            h('span', { class: `tl-bar ${t}`, style: { left: pos(m.created_at), width: `max(3px, calc(${pos(end)} - ${pos(m.created_at)}))` } }),
            m.error ? h('span', { class: 'tl-err', style: { left: `min(calc(${pos(end)} + 6px), 70%)` } }, clip(m.error, 90)) : null)));
      }
    }
    if (shown > LIMIT) rows.push(h('p', { class: 'dim' }, `… and ${fmtN(shown - LIMIT)} more messages.`));
    // A prerequisite sync: the messages, of any process, that waited for its key.
    const unblocks = tr.unblocks || [];
    if (unblocks.length) {
      const byProcess = new Map();
      for (const m of unblocks) byProcess.set(m.process_id, (byProcess.get(m.process_id) || 0) + 1);
      rows.push(h('div', { class: 'unblocks' },
        h('h3', null, `Unblocked ${fmtN(unblocks.length)} waiting message${unblocks.length === 1 ? '' : 's'}`),
        h('ul', null, [...byProcess].slice(0, 50).map(([pid, n]) => h('li', null,
          h('a', { href: `#/processes/${encodeURIComponent(pid)}` }, `process …${pid.slice(-12)}`), ` — ${fmtN(n)} message${n === 1 ? '' : 's'}`)))));
    }
    return h('div', { class: 'timeline' }, rows);
  }

  // ---------------------------------------------------------------- Trash
  const selected = new Set();

  function trashView(parts, query) {
    if (parts[1]) return trashDetail(parts[1]);
    const filter = {
      topology: query.get('topology') || '',
      node: query.get('node') || '',
      process_id: query.get('process_id') || '',
      error: query.get('error') || '',
    };
    const topo = h('select', { name: 'topology' }, h('option', { value: '' }, 'all topologies'));
    topologies().then((list) => {
      topo.append(...list.map((t) => h('option', { value: t.name, selected: filter.topology === t.name }, t.name)));
    }).catch(() => {});
    const input = (name, placeholder) => h('input', { name, placeholder, value: filter[name], spellcheck: 'false' });
    const form = h('form', { class: 'filters', onsubmit: (ev) => {
      ev.preventDefault();
      const f = Object.fromEntries(new FormData(form));
      location.hash = `#/trash${q(f)}`;
    } },
    topo, input('node', 'node'), input('process_id', 'process id'), input('error', 'error contains'),
    h('button', { type: 'submit' }, 'Filter'),
    Object.values(filter).some(Boolean) ? h('a', { href: '#/trash', class: 'clear' }, 'clear') : null);
    topo.addEventListener('change', () => form.requestSubmit());

    const all = h('input', { type: 'checkbox', title: 'select all shown' });
    const approveSel = h('button', { disabled: true }, 'Approve selected');
    const rejectSel = h('button', { class: 'danger', disabled: true }, 'Reject selected');
    const matching = Object.values(filter).some(Boolean) ? 'matching the filter' : 'in the trash';
    const approveAll = h('button', null, `Approve all ${matching}`);
    const rejectAll = h('button', { class: 'danger' }, `Reject all ${matching}`);
    const info = h('span', { class: 'dim' });
    const bulk = h('div', { class: 'bulk' }, approveSel, rejectSel, h('span', { class: 'sep' }), approveAll, rejectAll, info);

    const p = panel('Trash', form);
    p.el.insertBefore(bulk, p.body);
    main.append(h('div', { class: 'page' }, p.el));

    let shownIds = [];
    const syncSelection = () => {
      const n = shownIds.filter((id) => selected.has(id)).length;
      approveSel.disabled = rejectSel.disabled = n === 0;
      approveSel.textContent = n ? `Approve ${n} selected` : 'Approve selected';
      rejectSel.textContent = n ? `Reject ${n} selected` : 'Reject selected';
      all.checked = n > 0 && n === shownIds.length;
      all.indeterminate = n > 0 && n < shownIds.length;
    };
    all.addEventListener('change', () => {
      for (const id of shownIds) all.checked ? selected.add(id) : selected.delete(id);
      p.body.querySelectorAll('input[data-id]').forEach((c) => { c.checked = all.checked; });
      syncSelection();
    });

    const actOnSelected = async (action) => {
      const ids = shownIds.filter((id) => selected.has(id));
      if (action === 'reject' && !confirm(`Reject ${ids.length} trash entr${ids.length === 1 ? 'y' : 'ies'}? They are closed for good.`)) return;
      let ok = 0;
      const failures = [];
      for (const id of ids) {
        try {
          await api(`/api/trash/${id}/${action}`, { method: 'POST' });
          ok++;
          selected.delete(id);
        } catch (e) {
          failures.push(e.message);
        }
      }
      toast(`${action === 'approve' ? 'Approved' : 'Rejected'} ${ok} of ${ids.length}.${failures.length ? ` Failed: ${failures[0]}` : ''}`, failures.length ? 'bad' : 'good');
      refresh();
    };
    approveSel.addEventListener('click', () => actOnSelected('approve'));
    rejectSel.addEventListener('click', () => actOnSelected('reject'));

    const bulkAct = async (action) => {
      const what = Object.entries(filter).filter(([, v]) => v).map(([k, v]) => `${k} = ${v}`).join(', ') || 'no filter: everything in the trash';
      if (!confirm(`${action === 'approve' ? 'Approve' : 'Reject'} every trash entry matching (${what})?`)) return;
      const f = Object.fromEntries(Object.entries(filter).filter(([, v]) => v));
      try {
        const all = Object.keys(f).length === 0;
        const r = await api('/api/trash/bulk', { method: 'POST', body: { action, filter: f, all } });
        toast(`${action === 'approve' ? 'Approved' : 'Rejected'} ${fmtN(r.count)} entr${r.count === 1 ? 'y' : 'ies'}.`);
      } catch (e) {
        toast(unavailable(e) ? 'Bulk actions are not available on this server yet (POST /api/trash/bulk).' : e.message, 'bad');
      }
      refresh();
    };
    approveAll.addEventListener('click', () => bulkAct('approve'));
    rejectAll.addEventListener('click', () => bulkAct('reject'));

    const url = `/api/trash${q({ ...filter, limit: 500 })}`;
    const refresh = () => fill(p.body, () => api(url), (list) => {
      shownIds = list.map((t) => t.message_id);
      for (const id of [...selected]) if (!shownIds.includes(id)) selected.delete(id);
      info.textContent = list.length >= 500 ? 'showing the first 500' : `${fmtN(list.length)} entr${list.length === 1 ? 'y' : 'ies'}`;
      syncSelection();
      if (!list.length) return empty(Object.values(filter).some(Boolean) ? 'Nothing in the trash matches this filter.' : 'The trash is empty. Every failed message would show up here.');
      return table([all, 'failed', 'topology › node', 'error', 'attempts', 'process', ''], list.map((t) => {
        const last = t.attempts && t.attempts.length ? t.attempts[t.attempts.length - 1] : null;
        const box = h('input', { type: 'checkbox', 'data-id': t.message_id, checked: selected.has(t.message_id), onchange: (ev) => {
          ev.target.checked ? selected.add(t.message_id) : selected.delete(t.message_id);
          syncSelection();
        } });
        const open = () => { location.hash = `#/trash/${t.message_id}`; };
        return h('tr', { class: 'clickable', 'data-id': t.message_id, onclick: (ev) => { if (!ev.target.closest('input,a')) open(); } },
          h('td', null, box),
          h('td', null, when(t.at)),
          h('td', null, h('a', { href: `#/trash/${t.message_id}` }, t.topology, ' › ', h('b', null, t.node)),
            h('div', { class: 'excerpt-line mono', title: 'payload' }, clip(JSON.stringify(t.payload), 48))),
          h('td', { class: 'err' }, last && last.status ? h('span', { class: 'status' }, last.status) : null, clip(t.error || '(no error text)', 160),
            t.repeats ? h('span', { class: 'chip', title: 'identical failures collapsed under this entry; actions apply to them too' }, `+${fmtN(t.repeats)} identical`) : null,
            last && last.response_excerpt ? h('div', { class: 'excerpt-line mono', title: last.response_excerpt }, clip(last.response_excerpt, 140)) : null),
          h('td', null, fmtN(t.attempts ? t.attempts.length : 0)),
          h('td', null, procLink(t.process_id)),
          h('td', null, h('a', { href: `#/trash/${t.message_id}`, class: 'btn' }, 'Open')));
      }), 'trash');
    });
    every(4000, refresh);
  }

  async function trashDetail(id) {
    const page = h('div', { class: 'page' }, empty('Loading…'));
    main.append(page);
    let t;
    try {
      t = await api(`/api/trash/${encodeURIComponent(id)}`);
    } catch (e) {
      page.replaceChildren(h('p', null, h('a', { href: '#/trash' }, '← trash')),
        e.status === 404 ? h('p', { class: 'note' }, 'This message is not in the trash (any more): it was approved, edited or rejected.') : problem(e));
      return;
    }
    const rows = (text, min, max) => Math.min(max, Math.max(min, text.split('\n').length + 1));
    const payloadText = JSON.stringify(t.payload, null, 2);
    const headersText = JSON.stringify(t.headers || {}, null, 2);
    const payload = h('textarea', { id: 'payload', class: 'code', spellcheck: 'false', rows: rows(payloadText, 6, 24) });
    payload.value = payloadText;
    const headers = h('textarea', { id: 'headers', class: 'code', spellcheck: 'false', rows: rows(headersText, 2, 10) });
    headers.value = headersText;
    const checkPayload = jsonCheck(payload);
    const checkHeaders = jsonCheck(headers, (v) =>
      v && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string')
        ? null : 'headers must be an object of string values');
    const original = { payload: payload.value, headers: headers.value };

    const approve = h('button', { id: 'btn-approve', class: 'primary' }, 'Approve (retry as is)');
    const edit = h('button', { id: 'btn-edit', class: 'primary', disabled: true }, 'Save & approve');
    const reject = h('button', { id: 'btn-reject', class: 'danger' }, 'Reject');
    const reset = h('button', { class: 'ghost', type: 'button' }, 'Reset');
    const format = h('button', { class: 'ghost', type: 'button' }, 'Format');
    const note = h('span', { class: 'dim', id: 'edit-note' });
    const changed = () => payload.value !== original.payload || headers.value !== original.headers;
    const syncButtons = () => {
      const valid = checkPayload().ok && checkHeaders().ok;
      edit.disabled = !changed() || !valid;
      approve.disabled = changed();
      note.textContent = changed()
        ? (valid ? 'Edited: Save & approve retries with the new version.' : 'Fix the JSON to save.')
        : 'Approve retries the message as it is; to fix it, change the payload or headers below.';
    };
    payload.addEventListener('checked', syncButtons);
    headers.addEventListener('checked', syncButtons);
    reset.addEventListener('click', () => { payload.value = original.payload; headers.value = original.headers; syncButtons(); });
    format.addEventListener('click', () => {
      for (const [area, check] of [[payload, checkPayload], [headers, checkHeaders]]) {
        const r = check();
        if (r.ok) area.value = JSON.stringify(r.value, null, 2);
      }
      syncButtons();
    });

    const busy = (on) => { for (const b of [approve, edit, reject]) b.disabled = on; if (!on) syncButtons(); };
    const done = (msg) => {
      toast(msg, 'good', { href: `#/processes/${t.process_id}`, text: 'Watch the process' });
      location.hash = '#/trash';
    };
    approve.addEventListener('click', async () => {
      busy(true);
      try {
        await api(`/api/trash/${t.message_id}/approve`, { method: 'POST' });
        done(`Approved: the message runs again at ${t.node}.`);
      } catch (e) { toast(e.message, 'bad'); busy(false); }
    });
    edit.addEventListener('click', async () => {
      const p = checkPayload();
      const hd = checkHeaders();
      if (!p.ok || !hd.ok) return;
      const body = { payload: p.value };
      if (headers.value !== original.headers) body.headers = hd.value;
      busy(true);
      try {
        await api(`/api/trash/${t.message_id}/edit`, { method: 'POST', body });
        done(`Edited and approved: the new version runs again at ${t.node}.`);
      } catch (e) {
        toast(unavailable(e) ? 'Editing is not available on this server yet (POST /api/trash/{id}/edit).' : `Not saved: ${e.message}`, 'bad');
        busy(false);
      }
    });
    reject.addEventListener('click', async () => {
      if (!confirm('Reject this message? It is closed for good and counted as rejected in its process.')) return;
      busy(true);
      try {
        await api(`/api/trash/${t.message_id}/reject`, { method: 'POST' });
        done('Rejected.');
      } catch (e) { toast(e.message, 'bad'); busy(false); }
    });

    const attempts = (t.attempts || []).slice().reverse();
    const lastTry = attempts[0];
    page.replaceChildren(
      h('p', { class: 'crumbs' }, h('a', { href: '#/trash' }, '← trash'), ' ', h('a', { href: `#/trash?topology=${encodeURIComponent(t.topology)}&node=${encodeURIComponent(t.node)}` }, `all of ${t.topology} › ${t.node}`)),
      h('div', { class: 'title' }, h('h1', null, t.topology, ' › ', t.node), pill('trash', 'bad'), h('span', { class: 'mono dim', title: 'message id' }, t.message_id)),
      h('div', { class: 'errbox', id: 'trash-error' }, t.error || '(no error text)',
        lastTry && lastTry.response_excerpt ? h('div', { class: 'errbox-answer' }, h('span', null, lastTry.status ? `the system answered ${lastTry.status}:` : 'the system answered:'), h('code', null, lastTry.response_excerpt)) : null),
      h('dl', { class: 'facts' },
        h('dt', null, 'failed'), h('dd', null, stamp(t.at), ' (', when(t.at), ')'),
        h('dt', null, 'process'), h('dd', null, h('a', { href: `#/processes/${t.process_id}`, class: 'mono' }, t.process_id)),
        h('dt', null, 'attempts'), h('dd', null, fmtN((t.attempts || []).length)),
        t.repeats ? [h('dt', null, 'identical failures'), h('dd', null, `${fmtN(t.repeats)} more collapsed under this one; approving or rejecting it does the same to them`)] : null),
      h('div', { class: 'actions sticky-actions' }, approve, edit, reject, note),
      h('div', { class: 'grid2' },
        h('section', { class: 'panel' },
          h('header', null, h('h2', null, 'Message'), h('div', { class: 'panel-tools' }, format, reset)),
          h('div', { class: 'panel-body' },
            h('label', { class: 'field' }, 'Payload (JSON)', payload, checkPayload.status),
            h('label', { class: 'field' }, 'Headers (JSON object of strings)', headers, checkHeaders.status))),
        h('section', { class: 'panel' },
          h('header', null, h('h2', null, 'Attempts'), h('div', { class: 'panel-tools' }, h('span', { class: 'dim' }, 'newest first'))),
          h('div', { class: 'panel-body' }, attempts.length ? h('ol', { class: 'attempts' }, attempts.map((a) => h('li', null,
            h('div', { class: 'att-head' }, h('b', null, `#${a.attempt}`), pill(a.outcome), a.status ? h('span', { class: 'status' }, a.status) : null,
              h('span', { class: 'dim' }, stamp(a.at)), h('span', { class: 'dim' }, dur(a.duration_ms))),
            a.error ? h('div', { class: 'err' }, a.error) : null,
            a.response_excerpt ? h('pre', { class: 'excerpt' }, a.response_excerpt) : null)))
            : empty('No attempt recorded.')))));
    syncButtons();
  }

  // ---------------------------------------------------------------- Parked
  function parkedView() {
    const p = panel('Parked keys', h('span', { class: 'dim' }, 'messages waiting for a prerequisite, by key'));
    const summary = h('p', { class: 'lead' });
    main.append(h('div', { class: 'page' }, summary, p.el));
    const act = async (key, action, n) => {
      const text = action === 'release'
        ? `Release ${key}? ${n} message(s) resume at their resume node now, as if the sync had finished.`
        : `Drop ${key}? ${n} message(s) go to the trash (you can approve them later).`;
      if (!confirm(text)) return;
      try {
        const r = await api(`/api/keys/${encodeURIComponent(key)}/${action}`, { method: 'POST' });
        toast(action === 'release'
          ? `Released ${key}: ${fmtN(r && r.resumed)} message(s) resumed.`
          : `Dropped ${key}: ${fmtN(r && r.count)} message(s) sent to the trash.`);
      } catch (e) {
        toast(unavailable(e) ? `${action} is not available on this server yet.` : e.message, 'bad');
      }
      refresh();
    };
    const refresh = () => fill(p.body, () => api('/api/parked'), (keys) => {
      const msgs = keys.reduce((n, k) => n + (k.parked || 0), 0);
      const syncs = keys.filter((k) => k.sync_pending_since).length;
      summary.textContent = keys.length
        ? `${fmtN(msgs)} message${msgs === 1 ? '' : 's'} parked under ${fmtN(keys.length)} key${keys.length === 1 ? '' : 's'}; ${fmtN(syncs)} sync${syncs === 1 ? '' : 's'} in flight.`
        : '';
      if (!keys.length) return empty('Nothing is parked: no message waits for a prerequisite.');
      return table(['key', 'parked', 'oldest', 'sync in flight since', 'sync process', ''], keys.map((k) => h('tr', { 'data-key': k.key },
        h('td', { class: 'mono' }, k.key),
        h('td', null, h('b', null, fmtN(k.parked))),
        h('td', null, k.oldest ? when(k.oldest) : '—'),
        h('td', null, k.sync_pending_since ? when(k.sync_pending_since) : h('span', { class: 'dim' }, 'no sync in flight')),
        h('td', null, k.sync_process_id ? procLink(k.sync_process_id) : '—'),
        h('td', { class: 'actions' },
          h('button', { onclick: () => act(k.key, 'release', k.parked), title: 'resume every message parked under this key' }, 'Release'),
          h('button', { class: 'danger', onclick: () => act(k.key, 'drop', k.parked), title: 'send every message parked under this key to the trash' }, 'Drop')))));
    });
    every(2000, refresh);
  }

  // ---------------------------------------------------------------- Limiter
  function limiterView() {
    const p = panel('Limiter', h('span', { class: 'dim' }, 'per-system rate and concurrency; messages waiting for capacity stay queued as limited'));
    main.append(h('div', { class: 'page' }, p.el));
    every(1000, () => fill(p.body, () => api('/api/limiter'), (rows) => {
      if (!rows.length) return empty('No system has a rate or concurrency limit.');
      return table(['system', 'topology', 'rate', 'burst', 'in flight', 'paused', 'waiting', 'oldest wait'], rows.map((r) => {
        const waiting = (r.waiting || []).reduce((n, w) => n + w.count, 0);
        const pct = r.max_concurrent ? Math.min(100, (100 * r.in_flight) / r.max_concurrent) : 0;
        const paused = r.paused_until && r.paused_until > Date.now();
        return h('tr', null,
          h('td', null, h('b', null, r.system)),
          h('td', null, r.topology || '—'),
          h('td', null, r.rate || h('span', { class: 'dim' }, 'no limit')),
          h('td', null, r.burst == null ? '—' : fmtN(r.burst)),
          h('td', { class: 'w-bar' }, r.max_concurrent
            ? h('div', { class: 'meter', title: `${r.in_flight} of ${r.max_concurrent}` }, h('span', { style: { width: `${pct}%` }, class: pct >= 100 ? 'full' : null }), h('em', null, `${fmtN(r.in_flight)} / ${fmtN(r.max_concurrent)}`))
            : `${fmtN(r.in_flight)} (no cap)`),
          h('td', null, paused ? h('span', { class: 'pill retry', title: stamp(r.paused_until) }, `paused ${dur(r.paused_until - Date.now())}`) : h('span', { class: 'dim' }, '—')),
          h('td', { class: 'wrap' }, waiting
            ? [h('b', null, fmtN(waiting)), ' ', (r.waiting || []).map((w) => h('span', { class: 'chip' }, `${w.topology} › ${w.node}: ${fmtN(w.count)}`))]
            : h('span', { class: 'dim' }, 'none')),
          h('td', null, r.oldest_wait ? when(r.oldest_wait) : '—'));
      }));
    }, 'GET /api/limiter'));
  }

  // ---------------------------------------------------------------- Heatmap
  function heatmapView(parts, query) {
    const window_ = ['1h', '24h', '7d'].includes(query.get('window')) ? query.get('window') : '1h';
    const picker = h('div', { class: 'seg-picker', role: 'group' }, ['1h', '24h', '7d'].map((w) =>
      h('a', { href: `#/heatmap?window=${w}`, class: w === window_ ? 'on' : null }, w)));
    const p = panel('Outcomes over time', picker);
    main.append(h('div', { class: 'page' }, p.el));
    every(window_ === '1h' ? 10000 : 60000, () => fill(p.body, () => api(`/api/heatmap?window=${window_}`), heatmap, 'GET /api/heatmap'));
  }

  function heatmap(hm) {
    if (!hm.rows.length) return empty('No step finished in this window.');
    const RH = 20;
    const wrap = h('div', { class: 'heat' });
    const labels = h('div', { class: 'heat-labels' });
    const area = h('div', { class: 'heat-area' });
    const canvas = h('canvas', { height: hm.rows.length * RH });
    const tip = h('div', { class: 'heat-tip', hidden: true });
    const axis = h('div', { class: 'heat-axis' });
    area.append(canvas, axis, tip);
    const totals = h('div', { class: 'heat-totals' });
    let prev = '';
    for (const r of hm.rows) {
      const group = `${r.topology} › ${r.node}`;
      labels.append(h('div', { class: 'heat-label', title: `${group} · ${r.outcome}` },
        h('span', { class: prev === group ? 'same' : null }, group), pill(r.outcome)));
      totals.append(h('div', { class: 'heat-total' }, fmtN(r.counts.reduce((a, b) => a + b, 0))));
      prev = group;
    }
    wrap.append(labels, area, totals);
    const max = Math.max(1, ...hm.rows.flatMap((r) => r.counts));
    const css = getComputedStyle(document.documentElement);
    const colour = (t) => css.getPropertyValue(`--${t}`).trim() || '#888';
    const empty_ = css.getPropertyValue('--cell').trim() || '#eee';

    const draw = () => {
      const w = area.clientWidth;
      if (!w) return;
      const dpr = window.devicePixelRatio || 1;
      canvas.width = w * dpr;
      canvas.height = hm.rows.length * RH * dpr;
      canvas.style.width = `${w}px`;
      canvas.style.height = `${hm.rows.length * RH}px`;
      const g = canvas.getContext('2d');
      g.scale(dpr, dpr);
      const cw = w / hm.buckets;
      const gap = cw > 4 ? 1 : 0;
      hm.rows.forEach((r, i) => {
        const c = colour(tone(r.outcome));
        for (let b = 0; b < hm.buckets; b++) {
          const n = r.counts[b] || 0;
          g.globalAlpha = 1;
          g.fillStyle = empty_;
          if (n) {
            g.fillStyle = c;
            g.globalAlpha = 0.25 + 0.75 * (Math.log1p(n) / Math.log1p(max));
          }
          g.fillRect(b * cw, i * RH + 2, Math.max(cw - gap, 0.6), RH - 4);
        }
      });
      axis.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) =>
        h('span', { style: { left: `${f * 100}%` } }, clock(hm.start + f * hm.buckets * hm.bucket_ms))));
    };
    canvas.addEventListener('mousemove', (ev) => {
      const rect = canvas.getBoundingClientRect();
      const b = Math.floor(((ev.clientX - rect.left) / rect.width) * hm.buckets);
      const i = Math.floor((ev.clientY - rect.top) / RH);
      const r = hm.rows[i];
      if (!r || b < 0 || b >= hm.buckets) { tip.hidden = true; return; }
      const from = hm.start + b * hm.bucket_ms;
      tip.textContent = `${r.topology} › ${r.node} · ${r.outcome}: ${fmtN(r.counts[b] || 0)} (${stamp(from)} – ${clock(from + hm.bucket_ms)})`;
      tip.hidden = false;
      tip.style.left = `${Math.min(ev.clientX - rect.left + 12, rect.width - 260)}px`;
      tip.style.top = `${ev.clientY - rect.top + 14}px`;
    });
    canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
    requestAnimationFrame(draw);
    new ResizeObserver(draw).observe(area);
    return [h('p', { class: 'dim' }, `${hm.buckets} buckets of ${dur(hm.bucket_ms)}, from ${stamp(hm.start)}; colour by outcome, darker = more steps`), wrap];
  }

  // ---------------------------------------------------------------- router
  const views = {
    overview: () => overview(),
    topologies: (parts) => topologiesView(parts),
    processes: (parts, query) => processesView(parts, query),
    trash: (parts, query) => trashView(parts, query),
    parked: () => parkedView(),
    limiter: () => limiterView(),
    heatmap: (parts, query) => heatmapView(parts, query),
  };

  function route() {
    generation++;
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, search = ''] = raw.split('?');
    // A malformed escape in a hand-typed address stays as typed instead of blanking the page.
    const decode = (part) => { try { return decodeURIComponent(part); } catch { return part; } };
    const parts = path.split('/').filter(Boolean).map(decode);
    const name = parts[0] || 'overview';
    document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('on', a.dataset.view === name));
    document.title = `mend · ${name}`;
    main.replaceChildren();
    const view = views[name];
    if (!view) {
      main.append(h('div', { class: 'page' }, h('p', { class: 'note' }, `No page ${name}. `, h('a', { href: '#/' }, 'Overview'))));
      return;
    }
    view(parts, new URLSearchParams(search));
  }

  // ---------------------------------------------------------------- token
  const tokenInput = $('#token-input');
  const tokenBox = $('#token-box');
  const showToken = () => tokenBox.classList.toggle('set', !!getToken());
  tokenInput.value = getToken();
  showToken();
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    localStorage.setItem(tokenKey, tokenInput.value.trim());
    tokenBox.open = false;
    showToken();
    toast('API token saved in this browser.');
    route();
  });
  $('#token-clear').addEventListener('click', () => {
    localStorage.removeItem(tokenKey);
    tokenInput.value = '';
    showToken();
    route();
  });

  window.addEventListener('hashchange', route);
  route();
  const badgeLoop = async () => {
    try { await badges(); } catch { /* the views show errors */ }
    setTimeout(badgeLoop, document.hidden ? 20000 : 3000);
  };
  badgeLoop();
})();
