// Measurements of the web client in Debian's Chromium against a real sottod (BENCHMARKS.md):
// how fast a browser decrypts a backlog of N messages (opened after they were sent, so one sync
// fetches, decrypts, stores and shows them all), reload to interactive with that history, and
// the tab's memory (the renderer process's RSS: the page and its worker) with the history open.
//
//   node tests/bench.mjs SOTTOD WASM_PKG_DIR DIST [N]
//
// The sender is the same engine under Node (scripts/wasm-check's nodejs build in WASM_PKG_DIR).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [sottod, pkg, dist, nArg] = process.argv.slice(2);
const N = Number(nArg ?? 10000);
const { Device } = createRequire(import.meta.url)(join(pkg, 'sotto_wasm.js'));
const work = mkdtempSync(join(tmpdir(), 'sotto-web-bench-'));
const log = join(work, 'sottod.log');
const server = spawn(
  sottod,
  ['--data-dir', join(work, 'server'), '--listen', '127.0.0.1:0', '--web-dir', dist, '--no-rate-limits'],
  { stdio: ['ignore', openSync(log, 'w'), openSync(log, 'a')] },
);
let url;
for (let i = 0; i < 200 && !url; i++) {
  url = readFileSync(log, 'utf8').match(/http:\/\/127\.0\.0\.1:\d+/)?.[0];
  if (!url) await new Promise((r) => setTimeout(r, 50));
}

async function drive(d, request) {
  d.start(JSON.stringify(request));
  let answer = '';
  for (;;) {
    const op = JSON.parse(d.step(answer));
    if (op.op === 'done') {
      if (op.error !== undefined) throw new Error(op.error);
      return op.ok;
    }
    if (op.op === 'now') answer = JSON.stringify({ now: Date.now() });
    else if (op.op === 'sleep') {
      await new Promise((r) => setTimeout(r, op.ms));
      answer = '{"slept":true}';
    } else {
      const headers = {};
      if (op.bearer) headers.authorization = `Bearer ${op.bearer}`;
      if (op.body != null) headers['content-type'] = 'application/json';
      const resp = await fetch(url + op.path, { method: op.method, headers, body: op.body ?? undefined });
      answer = JSON.stringify({ status: resp.status, body: await resp.text() });
    }
  }
}

// The renderer processes of this browser: their RSS in KiB, largest first (the page and its
// worker live in the largest; Chromium keeps a spare renderer too).
function renderers() {
  const out = execFileSync('ps', ['-eo', 'rss,args'], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.includes('--type=renderer'))
    .map((l) => Number(l.trim().split(/\s+/)[0]))
    .sort((a, b) => b - a);
}
function rendererRssKb() {
  const all = renderers();
  console.error(`renderer processes (RSS MiB): ${all.map((k) => Math.round(k / 1024)).join(', ')}`);
  return all[0] ?? 0;
}

const browser = await chromium.launch({
  executablePath: process.env.SOTTO_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const results = { n: N };
try {
  const suffix = Math.floor(Math.random() * 1e9).toString(36);
  const bob = `bench${suffix}`;
  const ctx = await browser.newContext();
  let page = await ctx.newPage();
  await page.goto(url);
  await page.getByLabel('Username').fill(bob);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByTestId('me').waitFor({ timeout: 30000 });
  await new Promise((r) => setTimeout(r, 2000));
  results.renderer_rss_mb_registered_empty = Math.round(rendererRssKb() / 1024);
  await page.close();

  const alice = new Device();
  await drive(alice, { op: 'register', username: `sender${suffix}`, server: url });
  const s0 = Date.now();
  for (let i = 0; i < N; i++) await drive(alice, { op: 'sendDm', peer: bob, text: `message ${i} of the backlog` });
  results.sender_msgs_per_s = Math.round(N / ((Date.now() - s0) / 1000));

  page = await ctx.newPage();
  const t0 = Date.now();
  await page.goto(url);
  await page.getByTestId('me').waitFor({ timeout: 60000 });
  const t1 = Date.now();
  await page.getByRole('navigation', { name: 'Conversations' }).getByLabel(`${N} unread`).waitFor({ timeout: 600000 });
  const t2 = Date.now();
  results.backlog_ms = t2 - t1;
  results.decrypted_per_s = Math.round(N / ((t2 - t1) / 1000));

  await page.getByRole('navigation', { name: 'Conversations' }).getByRole('button').first().click();
  await page.getByRole('list', { name: 'Messages' }).locator(':scope > li').filter({ hasText: `message ${N - 1} of the backlog` }).waitFor({ timeout: 120000 });
  results.open_history_ms = Date.now() - t2;
  await new Promise((r) => setTimeout(r, 2000));
  results.renderer_rss_mb_history_open = Math.round(rendererRssKb() / 1024);

  const r0 = Date.now();
  await page.reload();
  await page.getByTestId('me').waitFor({ timeout: 60000 });
  results.reload_to_interactive_ms = Date.now() - r0;
  await page.getByRole('navigation', { name: 'Conversations' }).getByRole('button').first().waitFor();
  results.reload_to_list_ms = Date.now() - r0;
  await new Promise((r) => setTimeout(r, 2000));
  results.renderer_rss_mb_after_reload = Math.round(rendererRssKb() / 1024);
  results.indexeddb_records = await page.evaluate(
    () =>
      new Promise((resolve) => {
        const open = indexedDB.open('sotto');
        open.onsuccess = () => {
          const r = open.result.transaction('records').objectStore('records').count();
          r.onsuccess = () => resolve(r.result);
        };
      }),
  );
  void t0;
} finally {
  await browser.close();
  server.kill();
  rmSync(work, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
