// The client store conformance suite inside Chromium: the journaled store the web client's worker
// keeps, rebuilt from its records before every transaction, compiled to WebAssembly and run in a
// dedicated worker of a page served by a real sottod under its CSP.
//
//   node tests/conformance.mjs SOTTOD DIR   (DIR: tests/conformance plus the module built with
//                                            sotto-wasm's `conformance` feature)
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [sottod, dir] = process.argv.slice(2);
const work = mkdtempSync(join(tmpdir(), 'sotto-conf-'));
const log = join(work, 'sottod.log');
const server = spawn(sottod, ['--data-dir', join(work, 'server'), '--listen', '127.0.0.1:0', '--web-dir', dir], {
  stdio: ['ignore', openSync(log, 'w'), openSync(log, 'a')],
});
let url;
for (let i = 0; i < 200 && !url; i++) {
  url = readFileSync(log, 'utf8').match(/http:\/\/127\.0\.0\.1:\d+/)?.[0];
  if (!url) await new Promise((r) => setTimeout(r, 50));
}
const browser = await chromium.launch({
  executablePath: process.env.SOTTO_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let outcome;
try {
  const page = await browser.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/.test(m.text())) problems.push(m.text());
  });
  await page.goto(`${url}/index.html`);
  const status = page.getByRole('status');
  await status.filter({ hasText: /^(ok|FAILED)/ }).waitFor({ timeout: 120_000 });
  outcome = await status.innerText();
  if (problems.length > 0) outcome = `FAILED: ${problems.join('; ')}`;
} finally {
  await browser.close();
  server.kill();
  rmSync(work, { recursive: true, force: true });
}
console.log(`store conformance in Chromium: ${outcome}`);
if (!outcome.startsWith('ok')) process.exit(1);
