// The moec dashboard (coordinator/dashboard.h): polls /api/overview and, for the job named in
// the URL's #job=ID, /api/job every 2 s, and draws them. No external code.
'use strict';

const POLL_MS = 2000;
let selectedTask = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function bytes(n) {
  if (!n) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + ' ' + units[i];
}

function duration(s) {
  if (s < 0 || !isFinite(s)) return '?';
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + String(Math.round((s % 3600) / 60)).padStart(2, '0') + ' min';
}

function time(ms) { return ms ? new Date(ms).toLocaleString() : '–'; }

function short(state) { return state.replace(/^(JOB|TASK)_/, '').toLowerCase(); }

async function get(url) {
  const r = await fetch(url, {credentials: 'same-origin'});
  if (r.status === 401) { location.reload(); throw new Error('logged out'); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function progressBar(done, total) {
  const bar = el('span', {class: 'bar'}, el('span'));
  bar.firstChild.style.width = (total ? 100 * done / total : 0) + '%';
  return el('td', {}, bar, done + '/' + total);
}

function jobRow(j) {
  const took = j.end_time_ms ? duration((j.end_time_ms - j.submit_time_ms) / 1000) : '–';
  const row = el('tr', {class: 'job', 'data-job-id': j.job_id},
    el('td', {}, j.name), el('td', {class: 'muted'}, j.job_id),
    el('td', {class: 'state ' + j.state}, short(j.state)), progressBar(j.done, j.total),
    el('td', {}, j.eta_seconds >= 0 ? duration(j.eta_seconds) : '–'),
    el('td', {}, time(j.submit_time_ms)), el('td', {}, took));
  row.addEventListener('click', () => { location.hash = 'job=' + encodeURIComponent(j.job_id); });
  return row;
}

function workerRow(w, now) {
  const device = w.gpu ? 'GPU, ' + bytes(w.device_memory_bytes) : 'CPU';
  return el('tr', {'data-worker-id': w.worker_id}, el('td', {}, w.worker_id), el('td', {}, w.name),
    el('td', {}, device), el('td', {class: 'num'}, bytes(w.memory_bytes)),
    el('td', {}, w.tasks.join(', ') || 'idle'),
    el('td', {}, duration((now - w.last_seen_ms) / 1000) + ' ago'));
}

function drawHealth(h) {
  const failures = h.log_sync_failures ? ', ' + h.log_sync_failures + ' FAILED' : '';
  document.getElementById('health').textContent =
    'up ' + duration(h.uptime_seconds) + ' · ' + h.workers + ' workers · ' +
    h.leases_granted + ' leases, ' + h.retries + ' retries, ' + h.lease_expiries +
    ' expired · log synced ' + h.log_syncs + ' times' + failures +
    (h.store_bytes !== undefined ? ' · store ' + bytes(h.store_bytes) : '');
}

function drawOverview(o) {
  drawHealth(o.health);
  fill(document.querySelector('#jobs tbody'), o.jobs.map(jobRow));
  fill(document.querySelector('#workers tbody'), o.workers.map(w => workerRow(w, o.now_ms)));
}

function taskCell(t) {
  const cls = 'cell ' + t.state + (t.reused ? ' reused' : '') +
      (t.task_id === selectedTask ? ' selected' : '');
  const label = t.attempts > 1 ? String(t.attempts) : '';
  const cell = el('td', {class: cls, 'data-task-id': t.task_id,
    title: t.task_id + ': ' + short(t.state) + ', ' + t.attempts + ' attempt(s)'}, label);
  cell.addEventListener('click', () => { selectedTask = t.task_id; refresh(); });
  return cell;
}

function drawDag(job) {
  const byStage = new Map(job.stages.map(s => [s.stage, []]));
  for (const t of job.tasks) byStage.get(t.stage).push(t);
  const rows = job.stages.map(s => el('tr', {'data-stage': s.stage},
    el('th', {}, s.stage), el('td', {class: 'muted'}, s.kind),
    el('td', {class: 'muted'}, s.deps.length ? '← ' + s.deps.join(', ') : ''),
    ...byStage.get(s.stage).map(taskCell)));
  fill(document.querySelector('#dag tbody'), rows);
}

function drawTask(job) {
  const box = document.getElementById('task');
  const t = job.tasks.find(x => x.task_id === selectedTask);
  box.hidden = !t;
  if (!t) return;
  const lines = [el('h4', {}, t.task_id),
    el('p', {}, short(t.state) + ' · ' + t.attempts + ' attempt(s), ' + t.lost_leases +
       ' lost lease(s)' + (t.workers.length ? ' · on ' + t.workers.join(', ') : '') +
       (t.compute_ms ? ' · ran ' + duration(t.compute_ms / 1000) : '') +
       (t.reused ? ' · outputs reused' : '') +
       (t.state === 'TASK_LEASED' ? ' · ' + Math.round(100 * t.progress) + '% ' + t.progress_message : ''))];
  if (t.error) lines.push(el('p', {class: 'error'}, t.error));
  if (t.profile && t.profile.phases) {
    lines.push(el('p', {}, 'phases: ' + t.profile.phases.map(
      p => p.name + ' ' + (p.seconds || 0).toFixed(2) + ' s').join(', ')));
  }
  const history = job.events.filter(e => e.task_id === t.task_id);
  lines.push(el('ul', {}, ...history.map(e => el('li', {}, time(Number(e.time_ms)) + ' ' + e.kind +
    (e.message ? ': ' + e.message : '')))));
  box.replaceChildren(...lines);
}

function drawEvaluations(report) {
  const table = document.getElementById('evaluations');
  const cols = ['stage', 'model', 'perplexity', 'size', 'avg expert bits', 'parameters'];
  table.tHead.replaceChildren(el('tr', {}, ...cols.map(c => el('th', {}, c))));
  const rows = [];
  for (const e of report.evaluations) {
    for (const which of ['baseline', 'model']) {
      const m = e[which];
      if (!m) continue;
      rows.push(el('tr', {}, el('td', {}, e.stage),
        el('td', {}, (which === 'baseline' ? 'original: ' : '') + (m.path || '')),
        el('td', {class: 'num'}, (m.perplexity || 0).toFixed(3)),
        el('td', {class: 'num'}, bytes(m.size_bytes)),
        el('td', {class: 'num'}, (m.average_expert_bits || 0).toFixed(2)),
        el('td', {class: 'num'}, m.parameters || 0)));
    }
  }
  if (!rows.length) rows.push(el('tr', {}, el('td', {class: 'muted'}, 'no evaluation finished')));
  fill(table.tBodies[0], rows);
}

function drawCoverage(coverage) {
  const box = document.getElementById('coverage');
  const stages = (coverage && coverage.stages) || [];
  const lines = stages.map(s => el('p', {}, s.stage + ' (gptq, min_tokens ' + s.min_tokens +
    '): ' + s.experts + ' routed experts, the fewest saw ' + s.fewest_tokens + ' tokens; ' +
    (s.fallbacks ? s.fallbacks + ' fell back to round-to-nearest' : 'none fell back')));
  if (!stages.length) lines.push(el('p', {class: 'muted'}, 'no gptq stage finished'));
  const fallbacks = (coverage && coverage.fallbacks) || [];
  if (fallbacks.length) {
    lines.push(el('table', {id: 'fallbacks'},
      el('tr', {}, ...['stage', 'layer', 'expert', 'tokens'].map(c => el('th', {}, c))),
      ...fallbacks.slice(0, 50).map(f => el('tr', {}, el('td', {}, f.stage),
        el('td', {class: 'num'}, f.layer), el('td', {class: 'num'}, f.expert),
        el('td', {class: 'num'}, f.tokens)))));
  }
  box.replaceChildren(...lines);
}

function drawTime(time) {
  const rows = (time && time.stages || []).map(s => el('tr', {}, el('td', {}, s.stage),
    el('td', {class: 'num'}, s.tasks), el('td', {class: 'num'}, s.seconds.toFixed(2)),
    el('td', {class: 'num'}, s.commit_seconds.toFixed(2)),
    el('td', {class: 'num'}, s.gflops.toFixed(1)),
    el('td', {class: 'num'}, (100 * s.fraction_of_gemm).toFixed(0) + '%')));
  fill(document.querySelector('#time tbody'), rows);
}

function drawFigures(job) {
  const box = document.getElementById('figures');
  const want = job.figures.join('|') + '@' + job.events.length + job.job.state;
  if (box.dataset.drawn === want) return;  // unchanged: keep the images
  box.dataset.drawn = want;
  const q = 'job=' + encodeURIComponent(job.job.job_id) + '&v=' + Date.now() + '&name=';
  box.replaceChildren(...job.figures.map(name => el('figure', {},
    el('img', {src: '/api/figure?' + q + encodeURIComponent(name), alt: name}),
    el('figcaption', {}, name))));
}

function drawJob(job) {
  const j = job.job;
  document.getElementById('job-title').textContent = 'Job ' + j.name + ' (' + j.job_id + ')';
  document.getElementById('job-summary').textContent = short(j.state) + ' · ' + j.done + '/' +
    j.total + ' tasks done' + (j.failed ? ', ' + j.failed + ' failed' : '') +
    (j.eta_seconds >= 0 ? ' · ETA ' + duration(j.eta_seconds) : '') +
    (j.running.length ? ' · running: ' + j.running.join(', ') : '');
  document.getElementById('job-error').textContent = j.error;
  drawDag(job);
  drawTask(job);
  drawEvaluations(job.report);
  drawCoverage(job.report.coverage);
  drawTime(job.report.time);
  drawFigures(job);
  fill(document.getElementById('events'), job.events.slice(-50).reverse().map(e =>
    el('li', {}, time(Number(e.time_ms)) + ' ' + e.kind + ' ' + (e.task_id || '') +
       (e.message ? ': ' + e.message : ''))));
}

function selectedJob() {
  const m = /job=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

async function refresh() {
  const status = document.getElementById('status');
  try {
    drawOverview(await get('/api/overview'));
    const id = selectedJob();
    document.getElementById('job').hidden = !id;
    if (id) drawJob(await get('/api/job?id=' + encodeURIComponent(id)));
    status.textContent = '';
  } catch (e) {
    status.textContent = 'cannot refresh: ' + e.message;
  }
}

window.addEventListener('hashchange', () => { selectedTask = null; refresh(); });
refresh();
setInterval(refresh, POLL_MS);
