// The page's plot views (app/heatmap.py plotly_view): loaded once, as a script in the page's head, it defines
// xattnView, which each view's js_on_load calls with what gr.HTML gives it (element, trigger, props, server,
// upload, watch). One copy for the page: inlined as each view's js_on_load, it came in the page's config once a
// view, a megabyte of the page's 1.3 MB.
window.xattnView = function xattnView(element, trigger, props, server, upload, watch) {
  const view = element.querySelector('.xattn-view');
  const plot = element.querySelector('.xattn-plot');
  const tip = element.querySelector('.xattn-tip');
  const role = props.role || 'plot';
  const X = window.xattnViews || (window.xattnViews = {});     // what the page's views share (the text view too):
  X.bus = X.bus || new EventTarget();                          // news of the focus, key, marks and a click's views
  X.marked = X.marked || new Map();
  const tab = element.closest('[role="tabpanel"]') || document.body;   // a 'pick' view marks clicks in its tab
  const LEVEL = new Int16Array(256).fill(-1);      // code -> level (see xattn/viz/payload.py), -1 = masked
  const INDEX = new Int16Array(256).fill(-1);      // code -> its index among the safe codes (xattn/viz/cells.py why)
  for (let c = 0, k = 0; c < 256; c++) {
    if (c < 224 && (c & 15) !== 15 && (c & 63) < 62) { if (k < 205) LEVEL[c] = k; else if (k === 206) LEVEL[c] = -2; INDEX[c] = k++; }
  }
  const CONFIG = {displaylogo: false, responsive: true, scrollZoom: role === 'head',
                  modeBarButtonsToRemove: ['select2d', 'lasso2d', 'toImage']};
  // plotly's config goes with a view's first draw only: given to every react, plotly deep-copies and compares it each
  // time (about 10 ms a draw); the views never change theirs
  const config = () => (plot._fullLayout ? undefined : CONFIG);
  let info = {};          // layout.meta.xattn of the figure drawn
  let detail = null;      // meta of the full-resolution detail laid over a pooled head, if any
  let quiet = 0;          // relayouts of our own, which must not be taken for the user's
  let timer = null;
  let drawn = 0;
  let wired = false;

  const ready = () => new Promise(resolve => {
    const wait = () => (window.Plotly ? resolve(window.Plotly) : setTimeout(wait, 20));
    wait();
  });
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const labels = () => info.labels || [];                     // the queries' (rows')
  const keys = () => info.keys || labels();                    // the keys' (columns'): extra keys, context tokens
  const label = k => (labels()[k] !== undefined ? labels()[k] : String(k));
  const keyLabel = k => (keys()[k] !== undefined ? keys()[k] : String(k));
  const rows = () => info.n || labels().length || 1;
  const cols = () => info.n_keys || keys().length || rows();
  const position = v => (typeof v === 'number' ? Math.round(v) : parseInt(String(v).split('\u00b7').pop(), 10));
  const fmt = v => (v === null || v === undefined || Number.isNaN(v) ? 'masked'
                    : Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toPrecision(4));

  function expand(labels) {
    // axis labels as app/heatmap.py `compact` sends them: the head, then 'token·position' for each token; or those
    // of the query row its answer brought (heatmap.ROW_LABELS: views.focus_views sends one list, not three)
    if (labels && labels.as === 'row') return X.rowLabels || [];
    return labels && labels.tokens ? labels.head.concat(labels.tokens.map((t, i) => `${t}\u00b7${i}`)) : labels;
  }

  function rowLabels(row) {
    // the token labels a focus_views answer's query row carries (the head's and strip's are those), expanded
    const meta = row && row.plot ? ((parse(row).layout || {}).meta || {}).xattn : null;
    return meta && meta.labels && !meta.labels.as ? expand(meta.labels) : null;
  }

  function parse(value) {
    if (!value || !value.plot) return null;
    return typeof value.plot === 'string' ? JSON.parse(value.plot) : value.plot;
  }

  async function quietly(fn) {
    quiet++;
    try { return await fn(); } finally { quiet--; }
  }

  // ---- what the figure shows, in token positions

  function cellOf(t, r, c) {
    // trace `t` (full data), cell [r][c] -> {q0, q1, k0, k1, code, exact}
    const origin = (t.meta && t.meta.origin) || [0, 0];          // a grid tile's query 0, key 0 on shared axes
    const rows = Array.isArray(t.y) ? null : [t.y0 - origin[0], t.dy];
    const cols = Array.isArray(t.x) ? null : [t.x0 - origin[1], t.dx];
    const span = (axis, arr, i) => {
      if (!axis) { const p = position(arr[i]); return [p, p]; }
      const step = axis[1], centre = axis[0] + i * step;
      return [Math.round(centre - (step - 1) / 2), Math.round(centre + (step - 1) / 2)];
    };
    const [q0, q1] = span(rows, t.y, r), [k0, k1] = span(cols, t.x, c);
    const code = t.z && t.z[r] ? t.z[r][c] : undefined;
    const exact = t.customdata && t.customdata[r] ? t.customdata[r][c] : undefined;
    return {r, c, q0, q1, k0, k1, code, exact};
  }

  function valueOf(t, cell) {
    if (cell.exact !== undefined && cell.exact !== null) return cell.exact;
    const m = t.meta || {};
    if (cell.code === undefined || m.lo === undefined) return cell.code;
    const level = LEVEL[cell.code];
    return level < 0 ? NaN : m.lo + level * (m.hi - m.lo) / 204;
  }

  function headCell(q, k) {
    // the topmost heatmap of a focused head holding (q, k): the detail if it covers it, else the overview
    const traces = plot._fullData.filter(t => t.type === 'heatmap');
    for (const t of traces.slice().reverse()) {
      const rows = t.z.length, cols = t.z[0].length;
      const r = Math.floor((q - t.y0 + t.dy / 2) / t.dy), c = Math.floor((k - t.x0 + t.dx / 2) / t.dx);
      if (r >= 0 && r < rows && c >= 0 && c < cols) return [t, cellOf(t, r, c)];
    }
    return null;
  }

  function bytesOf(spec) {
    // a base64 typed array as plotly.py writes it ({dtype: 'u1', bdata, shape}) -> [Uint8Array, [rows, cols]]
    const raw = atob(spec.bdata), out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return [out, String(spec.shape).split(',').map(v => parseInt(v, 10))];
  }

  function whyOf(meta) {
    // layout.meta.xattn.why (xattn/viz/cells.py): why each cell is masked or pruned, decoded once per figure
    const w = meta && meta.why;
    if (!w || !w.codes || !w.codes.bdata) return null;
    const [codes, shape] = bytesOf(w.codes);
    return Object.assign({}, w, {bytes: codes, shape});
  }

  function tileOf(t) {
    // [layer, head] of a grid tile: tagged by the app (meta), else the figure's list of tiles in trace order
    const m = t.meta || {};
    if (m.layer !== undefined) return [m.layer, m.head];
    return info.tiles && info.tiles[t.index] ? info.tiles[t.index] : [info.layer, undefined];
  }

  function reason(t, cell) {
    // {mask: name} or {pruned: F} for a cell, from the why matrix of its figure (the detail's own, if it is one)
    const m = t.meta || {}, w = m.detail ? detail && detail.whyCodes : info.whyCodes;
    if (!w) return {};
    const layer = tileOf(t)[0] !== undefined ? tileOf(t)[0] : w.layers.length === 1 ? w.layers[0] : undefined;
    const matrix = w.layers.indexOf(layer) + 1;
    const [, rows, cols] = w.shape;
    const r = Math.floor((cell.q0 - w.region[0]) / w.factor), c = Math.floor((cell.k0 - w.region[2]) / w.factor);
    if (r < 0 || r >= rows || c < 0 || c >= cols) return {};
    const k = INDEX[w.bytes[(matrix * rows + r) * cols + c]];
    if (k >= w.pruned) return {pruned: w.f[0] + (k - w.pruned) * (w.f[1] - w.f[0]) / (w.levels - 1)};
    return k > 0 ? {mask: w.names[k]} : {};
  }

  const ours = t => t.type === 'heatmap' && t.meta && (t.meta.lo !== undefined || t.meta.categories);

  function describe(t, cell) {
    const m = t.meta || {};
    const span = (a, b, name) => (a === b ? name(a) : `${a}\u2013${b} (${name(a)} \u2026 ${name(b)})`);
    const block = cell.q1 > cell.q0 ? ` <i>(peak of a ${cell.q1 - cell.q0 + 1}\u00d7${cell.k1 - cell.k0 + 1} block)</i>` : '';
    const [layer, head] = tileOf(t);
    const where = head !== undefined ? `layer ${layer} \u00b7 head ${head}<br>` : '';
    const name = m.name || t.name || 'value';
    const value = valueOf(t, cell), why = cell.why || reason(t, cell);
    const about = cell.exact === undefined && m.lo !== undefined && info.hover ? '\u2248 ' : '';   // asked for below
    let shown = `<b>${name}: ${about}${fmt(value)}</b>`;
    if (m.categories) {                                       // a category map (masks, pruned keys): its name
      const what = m.categories[cell.code];
      shown = `<b>${what}</b>` + (why.mask && what !== why.mask ? ` (the ${why.mask} mask)` : '')
        + (why.pruned !== undefined ? ` (F = ${fmt(why.pruned)})` : '');
    } else if (m.lo !== undefined && LEVEL[cell.code] === -2)
      shown = `<b>${name}</b> hidden: ` + ((info.hidden_keys || []).includes(cell.k0) ? 'the sink column'
        : `attention below ${info.threshold}`);
    else if (Number.isNaN(value) || (m.lo !== undefined && LEVEL[cell.code] === -1))
      shown = `<b>${name}: masked</b>${why.mask ? ` by the ${why.mask} mask` : ''}`;
    else if (why.pruned !== undefined)
      shown += `<br><b>pruned by F</b> (F = ${fmt(why.pruned)}${cell.q1 > cell.q0 ? ', the block\u2019s largest' : ''})`;
    return `${where}query ${span(cell.q0, cell.q1, label)}<br>key ${span(cell.k0, cell.k1, keyLabel)}<br>` +
           `${shown}${block}`;
  }

  let asked = null;       // the cell the hover last asked the server about

  async function ask(t, cell, ev) {
    // a figure sent without its exact values (layout.meta.xattn.hover: views.make_head_views): the tip shows the value its
    // colour code stands for, then the server's exact value and why the cell is masked or pruned
    if (!info.hover || cell.exact !== undefined || !server || !server.hover_cell) return;
    const layer = tileOf(t)[0];
    const question = {hover: info.hover, trace: t.index, row: cell.r, col: cell.c, query: cell.q0, key: cell.k0,
                      layer: layer === undefined ? null : layer};
    const id = JSON.stringify(question);
    asked = id;
    let answer;
    try { answer = await server.hover_cell(question); } catch (err) { return; }
    if (asked !== id || tip.style.display === 'none' || !answer || answer.value === undefined) return;
    const exact = answer.value === null ? NaN : answer.value;
    showTip(describe(t, Object.assign({}, cell, {exact, why: answer})), ev);
    element.dataset.hovered = id;             // for tests: the last answer shown
  }

  function showTip(html, ev) {
    const box = view.getBoundingClientRect();
    tip.innerHTML = html;
    tip.style.display = 'block';
    const x = ev.clientX - box.left + 14, y = ev.clientY - box.top + 14;
    tip.style.left = Math.min(x, box.width - tip.offsetWidth - 4) + 'px';
    tip.style.top = Math.min(y, box.height - tip.offsetHeight - 4) + 'px';
  }

  function pointer(ev) {
    // (query, key) under the mouse on a single-panel head
    const fl = plot._fullLayout, xa = fl.xaxis, ya = fl.yaxis;
    const box = plot.getBoundingClientRect();
    const k = Math.round(xa.p2c(ev.clientX - box.left - xa._offset));
    const q = Math.round(ya.p2c(ev.clientY - box.top - ya._offset));
    return [q, k];
  }

  // ---- marks: the focused tile, the query row, the key column

  const shapeOf = t => (t.z && t.z.shape ? String(t.z.shape).split(',').map(Number) : [t.z.length, t.z[0].length]);

  function marks(data) {
    // the marks of the focus on `data` (the figure's traces, as sent or as drawn)
    const out = [];
    const line = {color: '#ff2d95', width: 2};
    const focus = X.focus, key = X.key;
    const heatAxes = () => new Map(data.filter(d => d.type === 'heatmap').map(d => [d.xaxis || 'x', d.yaxis || 'y']));
    if (role === 'grid' && focus && focus.layer !== undefined) {
      const t = data.find(d => d.type === 'heatmap' && d.meta && d.meta.layer === focus.layer
                               && d.meta.head === focus.head);
      const [rows, cols] = t ? shapeOf(t) : [];
      if (t) out.push({type: 'rect', xref: t.xaxis || 'x', yref: t.yaxis || 'y', x0: t.x0 - t.dx / 2,
                       x1: t.x0 + (cols - 0.5) * t.dx, y0: t.y0 - t.dy / 2, y1: t.y0 + (rows - 0.5) * t.dy,
                       line: {color: '#ff2d95', width: 3}, name: 'xattn-mark'});
    }
    if ((role === 'head' || role === 'strip') && focus && info.focus && focus.key === info.focus.key) {
      for (const [xa, ya] of heatAxes()) {
        if (focus.query !== undefined)
          out.push({type: 'rect', xref: `${xa} domain`, x0: 0, x1: 1, yref: ya, y0: focus.query - 0.5,
                    y1: focus.query + 0.5, line, name: 'xattn-mark'});
        if (key !== null && key !== undefined)
          out.push({type: 'rect', yref: `${ya} domain`, y0: 0, y1: 1, xref: xa, x0: key - 0.5, x1: key + 0.5,
                    line: {color: '#ff2d95', width: 1.5, dash: 'dot'}, name: 'xattn-mark'});
      }
    }
    const mark = role === 'pick' && info.n ? X.marked.get(tab) : null;    // the tab's last click, on query × key views
    if (mark && mark.n_keys === cols() && (mark.n === undefined || mark.n === rows())) {
      for (const [xa, ya] of heatAxes()) {
        if (mark.query !== undefined)
          out.push({type: 'rect', xref: `${xa} domain`, x0: 0, x1: 1, yref: ya, y0: mark.query - 0.5,
                    y1: mark.query + 0.5, line, name: 'xattn-mark'});
        out.push({type: 'rect', yref: `${ya} domain`, y0: 0, y1: 1, xref: xa, x0: mark.key - 0.5, x1: mark.key + 0.5,
                  line: {color: '#ff2d95', width: 1.5, dash: 'dot'}, name: 'xattn-mark'});
      }
    }
    if (role === 'row' && key !== null && key !== undefined && key < cols())
      out.push({type: 'rect', xref: 'x', x0: key - 0.5, x1: key + 0.5, yref: 'y domain', y0: 0, y1: 1,
                fillcolor: '#ff2d95', opacity: 0.12, line: {width: 0}, layer: 'below', name: 'xattn-mark'});
    return out;
  }

  async function remark() {
    if (!plot._fullLayout) return;
    const now = plot.layout.shapes || [];
    const shapes = now.filter(s => s.name !== 'xattn-mark').concat(marks(plot._fullData));
    if (JSON.stringify(shapes) !== JSON.stringify(now))     // every view hears every focus: most have nothing to move
      await quietly(() => Plotly.relayout(plot, {shapes}));
    stamp();
  }

  function stamp() {
    // what is drawn, for tests and benchmarks: the focus marked, the last figure's size and cells
    const f = X.focus;
    element.dataset.focus = f ? [f.layer, f.head, f.query].join(',') : '';
    element.dataset.key = info.key || '';
    element.dataset.detail = detail ? JSON.stringify(detail.region) : '';
  }

  // ---- tick labels: token labels once few tokens are visible

  function visible() {
    // [i0, i1, j0, j1]: the query rows and key columns the axes show now
    const fl = plot._fullLayout, n = rows(), m = cols();
    const [a, b] = fl.xaxis.range, [c, d] = fl.yaxis.range;
    const j0 = clamp(Math.floor(Math.min(a, b) + 0.5), 0, m), j1 = clamp(Math.ceil(Math.max(a, b) + 0.5), 0, m);
    const i0 = clamp(Math.floor(Math.min(c, d) + 0.5), 0, n), i1 = clamp(Math.ceil(Math.max(c, d) + 0.5), 0, n);
    return [i0, i1, j0, j1];
  }

  function ticks([i0, i1, j0, j1], [width, height]) {
    // a focused head's axes showing rows i0..i1 and columns j0..j1 on width × height px: token labels 15 px apart
    // once at most 64 tokens are in sight, plotly's own numbers beyond
    const along = (a, b, px, name) => {
      if (b - a > 64 || b <= a) return {tickmode: 'auto', tickvals: null, ticktext: null};
      const every = Math.max(1, Math.ceil((b - a) / Math.max(1, Math.floor(px / 15))));
      const vals = [];
      for (let v = a; v < b; v += every) vals.push(v);
      return {tickmode: 'array', tickvals: vals, ticktext: vals.map(name)};
    };
    return {xaxis: along(j0, j1, width, keyLabel), yaxis: along(i0, i1, height, label)};
  }

  function sized() {
    // the plot area's [width, height] in px: as drawn last, else as the view's width suggests
    const fl = plot._fullLayout;
    if (fl && fl.xaxis && fl.xaxis._length) return [fl.xaxis._length, fl.yaxis._length];
    const side = Math.max(100, (view.clientWidth || 600) - 160);
    return [side, side];
  }

  async function relabel() {
    if (role !== 'head' || !info.n) return;
    const update = {}, want = ticks(visible(), sized());
    for (const axis of ['xaxis', 'yaxis']) {
      const now = plot.layout[axis] || {};
      if (now.tickmode !== want[axis].tickmode || JSON.stringify(now.tickvals || null) !== JSON.stringify(want[axis].tickvals))
        for (const [k, v] of Object.entries(want[axis])) update[`${axis}.${k}`] = v;
    }
    if (Object.keys(update).length) await quietly(() => Plotly.relayout(plot, update));
  }

  // ---- zoom for detail

  function factorFor(rows, cols, cells) {
    let f = Math.max(1, Math.ceil(Math.sqrt(rows * cols / cells)));
    while (Math.ceil(rows / f) * Math.ceil(cols / f) > cells) f++;
    return f;
  }

  async function dropDetail() {
    if (!detail) return;
    detail = null;
    const layout = Object.assign({}, plot.layout, {title: info.title});
    await quietly(() => Plotly.react(plot, plot.data.filter(t => !(t.meta && t.meta.detail)), layout, config()));
    stamp();
  }

  async function zoomed() {
    if (role !== 'head' || !info.n) return;
    const [i0, i1, j0, j1] = visible();
    if (i1 <= i0 || j1 <= j0) return;
    if (i0 === 0 && j0 === 0 && i1 === rows() && j1 === cols()) { await dropDetail(); return; }
    if ((info.factor || 1) === 1) return;                      // the first view is already at full resolution
    const px = Math.round(clamp(plot._fullLayout._size.w, 64, 1024));
    const need = factorFor(i1 - i0, j1 - j0, px * px);
    if (detail) {
      const [a, b, c, d] = detail.region;
      if (a <= i0 && b >= i1 && c <= j0 && d >= j1 && detail.factor <= need) return;   // already drawn
    }
    if (need >= info.factor) return;                           // the first view shows as much here
    element.dataset.zoomRequested = JSON.stringify([i0, i1, j0, j1]);
    trigger('zoom', {region: [i0, i1, j0, j1], px, head: info.key});
  }

  // ---- drawing

  function cells(t) {
    // cells of a heatmap trace as sent: a typed array's shape, or nested lists
    const z = t.z;
    if (z && z.shape) return String(z.shape).split(',').reduce((a, b) => a * parseInt(b, 10), 1);
    return Array.isArray(z) ? z.reduce((sum, row) => sum + (row.length || 1), 0) : 0;
  }

  async function draw(value) {
    const Plotly = await ready();
    const started = performance.now();
    const fig = parse(value);
    tip.style.display = 'none';
    if (!fig) { Plotly.purge(plot); info = {}; detail = null; return; }
    const meta = (fig.layout && fig.layout.meta && fig.layout.meta.xattn) || {};
    for (const list of ['labels', 'keys']) if (meta[list]) meta[list] = expand(meta[list]);
    for (const t of fig.data) {                                 // our hover for our heatmaps, plotly's for the rest
      if (ours(t)) { t.hoverinfo = 'none'; delete t.hovertemplate; }
    }
    const layout = Object.assign({}, fig.layout, {autosize: true, width: undefined});
    const width = meta.n_keys || meta.n, region = meta.region || [0, meta.n, 0, width];
    const isDetail = role === 'head' && meta.n && !(region[0] === 0 && region[2] === 0 && region[1] === meta.n
                                                     && region[3] === width);
    if (isDetail) {
      // a zoomed-in region: lay it over the pooled first view of the same head, keeping the user's zoom
      if (!plot._fullLayout || meta.key !== info.key) return;  // the head shown has changed since: stale
      const heat = fig.data.find(t => t.type === 'heatmap');
      heat.meta = Object.assign({}, heat.meta, {detail: true});
      heat.coloraxis = 'coloraxis';
      const kept = plot.data.filter(t => !(t.meta && t.meta.detail));
      detail = Object.assign({}, meta, {whyCodes: whyOf(meta)});
      const title = Object.assign({}, plot.layout.title, {text: fig.layout.title.text});   // says what the detail is
      await quietly(() => Plotly.react(plot, kept.concat([heat]), Object.assign({}, plot.layout, {title}), config()));
    } else {
      if (role === 'head') layout.uirevision = meta.key || 'head';
      const zoomedIn = role === 'head' && plot._fullLayout && info.key === meta.key && plot.layout.xaxis
        && plot.layout.xaxis.autorange === false;                       // the same head again: plotly keeps the user's zoom
      detail = null;
      info = Object.assign({}, meta, {title: layout.title, whyCodes: whyOf(meta)});
      for (const t of fig.data) {                     // the key labels, sent once (heatmap.lean): a run of them from
        if (t.meta && t.meta.text === 'keys') t.text = keys().slice(t.meta.from || 0);   // the trace's first key
      }
      if (meta.focus) X.focus = meta.focus;
      const unmarked = role === 'pick' && X.marked.delete(tab);    // marks last till a redraw
      // one draw: the marks of the focus and a head's token labels go in with the figure, not in relayouts after
      layout.shapes = (layout.shapes || []).concat(marks(fig.data));
      if (role === 'head' && info.n && !zoomedIn) {
        const want = ticks([0, rows(), 0, cols()], sized());
        for (const axis of ['xaxis', 'yaxis']) layout[axis] = Object.assign({}, layout[axis], want[axis]);
      }
      await quietly(() => Plotly.react(plot, fig.data, layout, config()));
      if (meta.focus) X.refocus = true;                        // the other views hear it once every draw is done
      if (unmarked) X.bus.dispatchEvent(new Event('marked'));
    }
    wire();
    await relabel();
    element.dataset.bytes = String(value.plot.length);
    element.dataset.cells = String(fig.data.reduce((sum, t) => sum + (t.type === 'heatmap' ? cells(t) : 0), 0));
    element.dataset.ms = String(Math.round(performance.now() - started));   // parse and draw, in the page
    element.dataset.drawn = String(++drawn);
    measure();
    await remark();
    if (role === 'head' && !isDetail) zoomed();                // a redraw of a zoomed head: ask for its detail
  }

  function measure() {
    // how many pixels across this view draws a head in (the focused head's plot, a stage-strip panel), for the
    // server's first views of the next Run or click (views.Screen): the page's screen component sends them. A change
    // under a tenth (another figure's tick labels) is not news: the views made ahead for a Run stay the ones clicks ask for
    if ((role !== 'head' && role !== 'strip') || !plot._fullLayout || !plot._fullLayout.xaxis) return;
    const px = Math.round(plot._fullLayout.xaxis._length), was = (X.pixels = X.pixels || {})[role];
    if (px > 0 && (!was || Math.abs(px - was) > was / 10)) { X.pixels[role] = px; X.bus.dispatchEvent(new Event('pixels')); }
  }

  function picked(p) {
    // role 'pick' (the other tabs' views): a cell sends its query and key, a grid tile also its layer and head, a
    // cell of a layers × heads matrix (meta.layers: each row's layer) only its layer and head; a bar over keys sends
    // nothing. The tab's query × key views mark the clicked query row and key column until they redraw.
    const t = p.fullData, m = t.meta || {};
    const mark = where => { X.marked.set(tab, where); X.bus.dispatchEvent(new Event('marked')); };
    if (t.type === 'bar') { mark({key: p.pointNumber, n_keys: t.x.length}); return; }
    if (t.type !== 'heatmap') return;
    const [r, c] = p.pointNumber;
    if (m.layers) { trigger('pick', {layer: m.layers[r], head: c}); return; }
    const cell = cellOf(t, r, c), data = {query: clamp(cell.q0, 0, rows() - 1), key: clamp(cell.k0, 0, cols() - 1)};
    if (info.tiles || m.layer !== undefined) { const [layer, head] = tileOf(t); Object.assign(data, {layer, head}); }
    mark({query: data.query, key: data.key, n: rows(), n_keys: cols()});
    trigger('pick', data);
  }

  const DWELL_MS = 150;       // the pointer resting this long on another head's grid tile asks for its views
  let resting = null;        // {id, timer}: the tile the pointer rests on, till its views are asked for

  function question(data) {
    // what views.focus_views needs: the focus of the views shown (their run, stage, filter), the text view's switch,
    // then `data`
    const f = X.focus || {};
    const averaged = tab.querySelector('#text-averaged input');
    return Object.assign({run: f.run, stage: f.stage, threshold: f.threshold, hide_sink: f.hide_sink,
                          averaged: Boolean(averaged && averaged.checked), layer: f.layer, head: f.head,
                          pixels: X.pixels}, data);
  }
  const headOf = q => [q.run, q.stage, q.threshold, q.hide_sink, q.layer, q.head].join('|');   // one head's views

  function rest(t, cell) {
    // the pointer rests on another head's grid tile: ask for that head's views now (the query row and text view of
    // the query under the pointer), so that a click finds them
    const [layer, head] = tileOf(t), f = X.focus || {};
    if (layer === undefined || !server || !server.focus_views || !f.run || (f.layer === layer && f.head === head))
      return;
    const query = clamp(cell.q0, 0, rows() - 1);
    const q = question({layer, head, query, key: clamp(cell.k0, 0, cols() - 1), shown: {grid: f.grid}});
    const id = headOf(q);
    if (resting && resting.id === id) { resting.q = q; return; }          // the same tile: its latest query
    if (X.early && X.early.id === id) return;
    stopResting();
    const asking = () => {
      if (X.asking) { resting.timer = setTimeout(asking, DWELL_MS); return; }   // one question at a time: the server
      const answer = X.asking = server.focus_views(resting.q);                  // is not to queue up a sweep's tiles
      answer.finally(() => { if (X.asking === answer) X.asking = null; });
      X.early = {id, query: resting.q.query, answer};
      resting = null;
    };
    resting = {id, q, asking, timer: setTimeout(asking, DWELL_MS)};
  }

  function pressed() {
    // a button pressed on a tile the pointer had not rested on long enough: ask now, before the click (on release)
    if (resting && !X.asking) { clearTimeout(resting.timer); resting.asking(); }
  }

  function stopResting() { if (resting) clearTimeout(resting.timer); resting = null; }

  function pick(data) {
    // a click's views straight from the server (views.focus_views: no queue, no status updates), drawn as they come;
    // then the click's own request brings the sliders and predictions. A head's views asked for while the pointer
    // rested on its tile are drawn at once, and only the clicked query's row and text asked for. Through the
    // click's request alone when the server no longer keeps the run, or refuses the click (it then says why).
    stopResting();
    if (!server || !server.focus_views || !(X.focus || {}).run) { trigger('pick', data); return; }
    const click = X.clicks = (X.clicks || 0) + 1;
    const ask = question(data), grid = X.focus.grid;
    data = Object.assign({}, data, {layer: ask.layer, head: ask.head});   // the head shown, not the sliders' yet
    const early = X.early && X.early.id === headOf(ask) ? X.early : null;
    X.early = null;
    const show = (views, row) => {                 // `row`: the answer's query row, whose labels the others take
      const labels = rowLabels(row || views.row);
      if (labels) X.rowLabels = labels;
      X.bus.dispatchEvent(new CustomEvent('views', {detail: {tab, views}}));
    };
    const fallBack = () => { if (click === X.clicks) trigger('pick', data); };
    const asked = !early ? server.focus_views(ask) : early.query === ask.query ? early.answer : early.answer.then(
      answer => {                                    // the pointer moved within the tile: the clicked query's row
        if (click !== X.clicks || !answer || !answer.views) return server.focus_views(ask);
        show({head: answer.views.head, strip: answer.views.strip}, answer.views.row);
        return server.focus_views(Object.assign({}, ask, {shown: {grid, head: answer.head}}));
      });
    asked.then(answer => {
      if (click !== X.clicks) return;                          // a later click's views are on their way
      if (!answer || !answer.views) { fallBack(); return; }
      show(answer.views);
      X.queue.then(() => trigger('pick', Object.assign({drawn: true}, data)));   // once they are drawn
    }, fallBack);
  }

  // ---- a Run's views straight from the server, before its own request (ui.RUN_FIRST: the Run button's js)

  if (role === 'head' && server && server.run_views) X.run = async (names, inputs) => {
    // the Run's request inputs, each named, returned as the request is to send them: its screen says the views are
    // drawn where views.run_views answered and they are drawn and shown (the request then brings the predictions and
    // summary alone); as they came where it did not answer (the request does everything, as before)
    const asked = Object.fromEntries(names.map((name, k) => [name, inputs[k]]));
    asked.key = (X.modelKeys || {})[asked.model];          // a model of the session's own: its key (ui.MODEL_KEYS)
    // no request runs yet, so no progress shows: the tab's views dim while the server works (CSS, after 0.2 s)
    const views = Array.from(tab.querySelectorAll('.xattn-view'));
    const running = on => views.forEach(v => v.classList.toggle('xattn-running', on));
    running(true);
    let answer = null;
    try { answer = await server.run_views(asked); } catch (err) { answer = null; }
    if (!answer || !answer.views) { running(false); return inputs; }
    X.bus.dispatchEvent(new CustomEvent('views', {detail: {tab, views: answer.views}}));
    await X.queue;                                                                  // drawn,
    running(false);
    await new Promise(shown => requestAnimationFrame(() => setTimeout(shown, 0)));  // and on screen
    const sent = inputs.slice();
    sent[names.indexOf('screen')] = JSON.stringify(Object.assign({}, X.pixels, {drawn: answer.drawn}));
    return sent;
  };

  function wire() {
    if (wired) return;
    wired = true;
    plot.on('plotly_click', ev => {
      const p = ev.points && ev.points[0];
      if (!p || role === 'plot') return;                        // a figure of another tab: hover only
      if (role === 'pick') { picked(p); return; }
      if (role === 'row') {                                     // the query row: a bar (or step) picks a key
        X.key = p.pointNumber;
        X.bus.dispatchEvent(new Event('key'));
        return;
      }
      if (p.data.type !== 'heatmap') return;
      if (role === 'heads') {                                   // the Heads view: a head of one statistic
        trigger('pick', {layer: p.y, head: p.x, stat: (p.data.meta || {}).stat});
        return;
      }
      let q, k, t = p.fullData;
      if (role === 'head') [q, k] = pointer(ev.event);
      else { const cell = cellOf(t, p.pointNumber[0], p.pointNumber[1]); q = cell.q0; k = cell.k0; }
      q = clamp(q, 0, rows() - 1); k = clamp(k, 0, cols() - 1);
      const m = t.meta || {};
      X.key = k;
      const elsewhere = m.layer !== undefined && !(X.focus && X.focus.layer === m.layer && X.focus.head === m.head);
      if (!elsewhere) X.bus.dispatchEvent(new Event('key'));
      else {            // another head's tile: its outline moves at once (the click's answer), its views redraw marked
        X.focus = Object.assign({}, X.focus, {layer: m.layer, head: m.head});
        remark();
      }
      const data = {query: q, key: k, shown: X.focus ? {grid: X.focus.grid, head: X.focus.key} : {}};
      if (m.layer !== undefined) Object.assign(data, {layer: m.layer, head: m.head});
      pick(data);
    });
    plot.on('plotly_hover', ev => {
      const p = ev.points && ev.points[0];
      if (!p || !ours(p.data)) return;
      let found;
      if (role === 'head') { const [q, k] = pointer(ev.event); found = headCell(q, k); }
      else found = [p.fullData, cellOf(p.fullData, p.pointNumber[0], p.pointNumber[1])];
      if (!found) return;
      showTip(describe(found[0], found[1]), ev.event);
      ask(found[0], found[1], ev.event);
      if (role === 'grid') rest(found[0], found[1]);
    });
    plot.on('plotly_unhover', () => { tip.style.display = 'none'; asked = null; stopResting(); });
    if (role === 'grid') plot.addEventListener('pointerdown', pressed);
    plot.on('plotly_relayout', () => {
      if (quiet) return;
      relabel();
      clearTimeout(timer);
      timer = setTimeout(zoomed, 200);
    });
    for (const what of ['focus', 'key', 'marked']) X.bus.addEventListener(what, () => { if (plot._fullLayout) remark(); });
    new ResizeObserver(() => { if (plot._fullLayout) Promise.resolve(Plotly.Plots.resize(plot)).then(measure); })
      .observe(view);
  }

  // every view of the page draws in turn (one queue): plotly measures as it draws, and measuring while another plot
  // is half drawn makes the browser lay the page out again and again. A new focus is told to the views once the queue
  // is empty: a view about to redraw with it would otherwise move its marks first, for nothing.
  X.queue = X.queue || Promise.resolve();
  X.pending = X.pending || 0;
  let latest = null;      // the value this slot was last asked to draw: Gradio's update, or a click's view
  const redraw = value => {
    latest = value;
    X.pending++;
    X.queue = X.queue.then(() => draw(value)).catch(err => console.error('xattn view:', err)).finally(() => {
      if (--X.pending === 0 && X.refocus) { X.refocus = false; X.bus.dispatchEvent(new Event('focus')); }
    });
  };
  // run a function once the page is idle (a slot's value given to Gradio after it is drawn; the text view's too, ui.py)
  X.idle = X.idle || (fn => (window.requestIdleCallback ? requestIdleCallback(fn, {timeout: 1000}) : setTimeout(fn, 50)));
  watch('value', () => redraw(props.value));
  X.bus.addEventListener('views', ev => {               // a click's views (pick): this slot's, if it has one
    const value = ev.detail.tab === tab ? ev.detail.views[role] : null;
    if (!value) return;
    redraw(value);
    // The slot holds what it shows, as after Gradio's updates (a later update equal to it is then no change), once
    // the page is idle: Gradio compares and copies every prop of a slot given a value, 70-90 ms for a 2,048-token
    // click's three views, which their drawing need not wait for.
    X.queue.then(() => X.idle(() => { if (latest === value) props.value = value; }));
  });
  redraw(props.value);
};
