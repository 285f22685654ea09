// The web client in a real Chromium (Debian's, driven by playwright-core) against a real sottod
// serving the built bundle, with the real CLI as a third party. Every check is on what a person
// sees on the page.
//
//   node tests/e2e.mjs SOTTOD SOTTO_CLI DIST
//
// Prints one line per behaviour and the timings it measured; exits non-zero on the first failure.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, statSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [sottod, cli, dist] = process.argv.slice(2);
if (!sottod || !cli || !dist) {
  console.error('usage: node tests/e2e.mjs SOTTOD SOTTO_CLI DIST');
  process.exit(2);
}
const CHROMIUM = process.env.SOTTO_CHROMIUM ?? '/usr/bin/chromium';
const WAIT = 20_000;
const work = mkdtempSync(join(tmpdir(), 'sotto-web-'));
const suffix = Math.floor(Math.random() * 1e9).toString(36);
const names = { alice: `alice${suffix}`, bob: `bob${suffix}`, carol: `carol${suffix}` };
const plaintexts = [];
const said = (t) => (plaintexts.push(t), t);

function fail(why) {
  throw new Error(why);
}

async function startServer() {
  const log = join(work, 'sottod.log');
  const out = (await import('node:fs')).openSync(log, 'w');
  const child = spawn(sottod, ['--data-dir', join(work, 'server'), '--listen', '127.0.0.1:0', '--web-dir', dist], {
    stdio: ['ignore', out, out],
  });
  for (let i = 0; i < 200; i++) {
    const m = readFileSync(log, 'utf8').match(/http:\/\/127\.0\.0\.1:\d+/);
    if (m) return { child, url: m[0], log };
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill();
  fail(`sottod did not start: ${readFileSync(log, 'utf8')}`);
}

function sotto(home, ...args) {
  return execFileSync(cli, ['--home', join(work, home), ...args], { encoding: 'utf8', env: { ...process.env, RUST_BACKTRACE: '0' } });
}

// A page whose CSP violations and uncaught errors fail the run.
async function openPage(context, url, problems) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const t0 = Date.now();
  await page.goto(url);
  return { page, t0 };
}

async function register(page, username) {
  await page.getByLabel('Username').fill(username);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByTestId('me').filter({ hasText: username }).waitFor({ timeout: WAIT });
}

function messages(page) {
  return page.getByRole('list', { name: 'Messages' }).locator(':scope > li');
}

async function send(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByRole('button', { name: 'Send', exact: true }).click();
  await messages(page).filter({ hasText: text }).first().waitFor({ timeout: WAIT });
}

// The conversation list's entry for `title` (a username, or a group's name), not one whose
// last message merely mentions it.
function entry(page, title) {
  return page
    .getByRole('navigation', { name: 'Conversations' })
    .getByRole('button')
    .filter({ has: page.locator('span.title').getByText(new RegExp(`^(# )?${title}$`)) });
}

async function openConversation(page, title) {
  await entry(page, title).click({ timeout: WAIT });
  await page.getByRole('heading', { name: title }).waitFor({ timeout: WAIT });
}

async function sees(page, text, what) {
  try {
    await messages(page).filter({ hasText: text }).first().waitFor({ timeout: WAIT });
  } catch {
    fail(`${what}: "${text}" is not on the page; it shows: ${await page.getByRole('list', { name: 'Messages' }).innerText().catch(() => '(no message list)')}`);
  }
}

const timings = {};
// With SOTTO_SCREENSHOTS=DIR, the main views are saved there as PNG (the README shows them).
const shots = process.env.SOTTO_SCREENSHOTS;
async function shot(page, name) {
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`) });
}
const checks = [];
function ok(name) {
  checks.push(name);
  console.log(`ok - ${name}`);
}

const { child, url, log } = await startServer();
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
try {
  // 1. Two people register in two browser profiles and chat in a DM, then in a group.
  const ctxA = await browser.newContext();
  const ctxB = await browser.newContext();
  let { page: alice, t0 } = await openPage(ctxA, url, problems);
  await alice.getByRole('button', { name: 'Create account' }).waitFor();
  timings.first_load_to_interactive_ms = Date.now() - t0;
  const { page: bob } = await openPage(ctxB, url, problems);
  await alice.setViewportSize({ width: 1100, height: 700 });
  await shot(alice, 'web-welcome');
  await register(alice, names.alice);
  await register(bob, names.bob);

  await alice.getByLabel('Chat with (username)').fill(names.bob);
  await alice.getByRole('button', { name: 'Start chat' }).click();
  await alice.getByRole('heading', { name: names.bob }).waitFor({ timeout: WAIT });
  await send(alice, said('hello bob, from a browser'));
  const unread = bob.getByRole('navigation', { name: 'Conversations' }).getByLabel('1 unread');
  await unread.waitFor({ timeout: WAIT });
  await openConversation(bob, names.alice);
  await sees(bob, 'hello bob, from a browser', 'bob reading the DM');
  await send(bob, said('hi alice, read you'));
  await sees(alice, 'hi alice, read you', 'alice receiving the answer by push');
  ok('two browsers register and chat in a DM');

  await alice.getByText('New group').click();
  await alice.getByLabel('Group name').fill('Book club');
  await alice.getByLabel('Members (usernames, comma separated)').fill(names.bob);
  await alice.getByRole('button', { name: 'Create group' }).click();
  await alice.getByRole('heading', { name: '# Book club' }).waitFor({ timeout: WAIT });
  await send(alice, said('first chapter tonight'));
  await openConversation(bob, 'Book club');
  await sees(bob, 'first chapter tonight', 'bob reading the group');
  await send(bob, said('I am in'));
  await sees(alice, 'I am in', 'alice reading the group answer');
  await alice.getByRole('button', { name: 'Group settings' }).click();
  await alice.getByRole('region', { name: 'Group settings' }).getByText(names.bob).first().waitFor();
  await shot(alice, 'web-group');
  await alice.getByRole('button', { name: 'Group settings' }).click();
  ok('two browsers chat in a group');

  // 6. A reaction, an edit and an unsend, seen on the other side.
  const target = messages(bob).filter({ hasText: 'first chapter tonight' }).first();
  await target.getByRole('button', { name: 'React with thumbs up' }).click();
  await messages(alice).filter({ hasText: 'first chapter tonight' }).getByRole('list', { name: 'Reactions' }).filter({ hasText: '👍 1' }).waitFor({ timeout: WAIT });
  const mine = messages(alice).filter({ hasText: 'first chapter tonight' }).first();
  await mine.getByRole('button', { name: 'Edit' }).click();
  await alice.getByLabel('Message', { exact: true }).fill(said('second chapter tonight'));
  await alice.getByRole('button', { name: 'Save' }).click();
  await messages(bob).filter({ hasText: 'second chapter tonight' }).filter({ hasText: 'edited' }).waitFor({ timeout: WAIT });
  await messages(alice).filter({ hasText: 'I am in' }).waitFor();
  await send(alice, said('oops, wrong group'));
  await sees(bob, 'oops, wrong group', 'bob before the unsend');
  await messages(alice).filter({ hasText: 'oops, wrong group' }).getByRole('button', { name: 'Unsend' }).click();
  await messages(bob).filter({ hasText: 'Message deleted' }).waitFor({ timeout: WAIT });
  if ((await messages(bob).filter({ hasText: 'oops, wrong group' }).count()) !== 0) fail('the unsent text is still on bob\'s page');
  await shot(bob, 'web-reactions-edit-unsend');
  ok('a reaction, an edit and an unsend are seen on the other side');

  // A reply shows what it answers. Group management from the page: the admin appoints another,
  // who renames the group; the admin removes a member, whose page then says so.
  await messages(bob).filter({ hasText: 'second chapter tonight' }).getByRole('button', { name: 'Reply' }).click();
  await bob.getByLabel('Message', { exact: true }).fill(said('which page do we start at?'));
  await bob.getByRole('button', { name: 'Send', exact: true }).click();
  await messages(alice)
    .filter({ hasText: 'which page do we start at?' })
    .locator('blockquote', { hasText: 'second chapter tonight' })
    .waitFor({ timeout: WAIT });
  await alice.getByRole('button', { name: 'Group settings' }).click();
  const settingsA = alice.getByRole('region', { name: 'Group settings' });
  await settingsA.getByRole('button', { name: `Make ${names.bob} admin` }).click();
  await settingsA.getByRole('listitem').filter({ hasText: names.bob }).filter({ hasText: '· admin' }).waitFor({ timeout: WAIT });
  await bob.getByRole('button', { name: 'Group settings' }).click();
  await bob.getByLabel('New name').fill('Book club II');
  await bob.getByRole('button', { name: 'Rename' }).click();
  await alice.getByRole('heading', { name: '# Book club II' }).waitFor({ timeout: WAIT });
  await settingsA.getByRole('button', { name: `Remove ${names.bob}` }).click();
  await bob.getByText('This conversation is removed').waitFor({ timeout: WAIT });
  if (!(await bob.getByLabel('Message', { exact: true }).isDisabled())) fail('a removed member can still type in the group');
  await alice.getByRole('button', { name: 'Group settings' }).click();
  ok('a reply, and group admins, renaming and removal, seen on both pages');

  // Disappearing messages: a timer set in the DM reaches the other side, a message sent under it
  // shows its countdown on both, and goes from both pages on time.
  await openConversation(alice, names.bob);
  await openConversation(bob, names.alice);
  await alice.getByRole('button', { name: 'Disappearing' }).click();
  await alice.getByLabel('Timer (for everyone in this conversation)').selectOption({ label: '30 seconds' });
  await alice.getByTestId('timer').filter({ hasText: 'timer set to 30 s' }).waitFor({ timeout: WAIT });
  await sees(bob, 'timer set to 30 s', 'bob seeing the timer change');
  const fleeting = said('this one disappears');
  await send(alice, fleeting);
  await sees(bob, fleeting, 'bob before the timer runs out');
  await messages(bob).filter({ hasText: fleeting }).filter({ hasText: /disappears in \d+ s/ }).waitFor({ timeout: WAIT });
  for (const [page, who] of [[alice, 'alice'], [bob, 'bob']]) {
    await messages(page).filter({ hasText: fleeting }).waitFor({ state: 'detached', timeout: 60_000 }).catch(() => {
      fail(`the disappearing message is still on ${who}'s page after its 30 s`);
    });
  }
  await alice.getByLabel('Timer (for everyone in this conversation)').selectOption({ label: 'Off' });
  await alice.getByTestId('timer').filter({ hasText: 'timer off' }).waitFor({ timeout: WAIT });
  await alice.getByRole('button', { name: 'Disappearing' }).click();
  ok('a disappearing timer reaches the other side and its message goes from both pages');

  // 5. Attachments: an image and a text file, encrypted in alice's browser, shown and saved by
  // bob's after his decrypts them.
  const png = Buffer.from(
    'iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGP4zwAE/xkgFAAb8gP91pbyKwAAAABJRU5ErkJggg==',
    'base64',
  );
  await alice.getByLabel('Attach a file').setInputFiles({ name: 'dot.png', mimeType: 'image/png', buffer: png });
  const notes = said('the meeting moved to Thursday, room 4');
  await alice.getByLabel('Attach a file').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from(notes) });
  await messages(alice).filter({ hasText: 'notes.txt' }).waitFor({ timeout: WAIT });
  const dot = messages(bob).filter({ hasText: 'dot.png' });
  // The sender's preview shows before anything is downloaded.
  await dot.getByRole('img', { name: 'Preview of dot.png' }).waitFor({ timeout: WAIT });
  await dot.getByRole('button', { name: 'Show image' }).click({ timeout: WAIT });
  const img = dot.getByRole('img', { name: 'dot.png' });
  await img.waitFor({ timeout: WAIT });
  const width = await img.evaluate((el) => (el.complete ? el.naturalWidth : new Promise((r) => (el.onload = () => r(el.naturalWidth)))));
  if (width !== 2) fail(`bob's copy of dot.png does not decode as the 2x2 image: width ${width}`);
  await shot(bob, 'web-attachments');
  const saving = bob.waitForEvent('download');
  await messages(bob).filter({ hasText: 'notes.txt' }).getByRole('button', { name: 'Download' }).click({ timeout: WAIT });
  const saved = await saving;
  const savedText = readFileSync(await saved.path(), 'utf8');
  if (savedText !== notes || saved.suggestedFilename() !== 'notes.txt') fail(`bob saved ${saved.suggestedFilename()}: "${savedText}"`);
  ok('an image (with its preview) and a file go encrypted from one browser and open in the other');

  // 4. A reload keeps the history and the keys.
  const r0 = Date.now();
  await alice.reload();
  await alice.getByTestId('me').filter({ hasText: names.alice }).waitFor({ timeout: WAIT });
  timings.reload_to_interactive_ms = Date.now() - r0;
  await openConversation(alice, names.bob);
  await sees(alice, 'hi alice, read you', 'alice after a reload');
  await send(alice, said('still me after a reload'));
  await openConversation(bob, names.alice);
  await sees(bob, 'still me after a reload', 'bob receiving from the reloaded browser');
  ok('a reload keeps the history and the keys');

  // Several tabs: a second tab follows the one that holds the device, and takes over when it
  // closes.
  const { page: alice2 } = await openPage(ctxA, url, problems);
  await alice2.getByTestId('me').filter({ hasText: names.alice }).waitFor({ timeout: WAIT });
  await openConversation(alice2, names.bob);
  await sees(alice2, 'still me after a reload', 'a second tab');
  await send(alice2, said('from a second tab'));
  await sees(bob, 'from a second tab', 'bob receiving from the second tab');
  await send(bob, said('both tabs see this'));
  await sees(alice2, 'both tabs see this', 'the second tab receiving');
  await sees(alice, 'both tabs see this', 'the first tab receiving');
  await alice.close();
  alice = alice2;
  await send(alice2, said('the first tab is closed'));
  await sees(bob, 'the first tab is closed', 'bob receiving after the hand-over');
  await send(bob, said('and still reaching you'));
  await sees(alice2, 'and still reaching you', 'the second tab receiving by its own push');
  ok('a second tab follows the first and takes over when it closes');

  // 2. A browser and a CLI device talk both ways.
  sotto('carol', '--server', url, 'register', names.carol);
  sotto('carol', 'send', names.alice, said('hello from the command line'));
  await entry(alice, names.carol).waitFor({ timeout: WAIT });
  await openConversation(alice, names.carol);
  await sees(alice, 'hello from the command line', 'alice reading the CLI');
  await send(alice, said('hello from the browser'));
  await shot(alice, 'web-dm');
  await alice.setViewportSize({ width: 390, height: 760 });
  await shot(alice, 'web-phone-conversation');
  await alice.getByRole('button', { name: 'Back to conversations' }).click();
  await shot(alice, 'web-phone-list');
  await alice.setViewportSize({ width: 1100, height: 700 });
  await openConversation(alice, names.carol);
  const got = sotto('carol', 'sync', '--json');
  if (!got.includes('hello from the browser')) fail(`the CLI did not get the browser's message: ${got}`);
  ok('a browser and a CLI device talk both ways');

  // 3. A browser linked to a CLI account sees that account's conversations from then on.
  const code = sotto('carol', 'device', 'add').trim().split('\n').pop();
  const ctxC = await browser.newContext();
  const { page: carolWeb } = await openPage(ctxC, url, problems);
  await carolWeb.getByLabel('Link code from that device').fill(code);
  await carolWeb.getByRole('button', { name: 'Link this browser' }).click();
  await carolWeb.getByTestId('me').filter({ hasText: names.carol }).waitFor({ timeout: WAIT });
  // carol's CLI adds the new device to her conversations on its next sync.
  sotto('carol', 'sync');
  await send(alice, said('carol, on every device'));
  await openConversation(carolWeb, names.alice);
  await sees(carolWeb, 'carol, on every device', 'carol\'s linked browser');
  ok('a browser linked to a CLI account sees its conversations from then on');

  await alice.getByRole('button', { name: 'Devices' }).click();
  await alice.getByRole('button', { name: 'Link a new device' }).click();
  await alice.getByTestId('link-code').waitFor({ timeout: WAIT });
  await alice.getByRole('img', { name: 'QR code of the link code' }).waitFor();
  await shot(alice, 'web-devices');
  await openConversation(alice, names.carol);

  // 7. Revoking the browser device cuts it off.
  const devices = sotto('carol', 'devices');
  const webDevice = devices.split('\n').find((l) => l.trim() !== '' && !l.includes('this device'))?.split(/\s+/)[0];
  if (!webDevice) fail(`no second device in: ${devices}`);
  sotto('carol', 'device', 'revoke', webDevice);
  await carolWeb.getByLabel('Message', { exact: true }).fill('am I still here?');
  await carolWeb.getByRole('button', { name: 'Send', exact: true }).click();
  await carolWeb.getByRole('alert').filter({ hasText: `no longer one of ${names.carol}'s devices` }).waitFor({ timeout: WAIT });
  // What it had stays readable.
  await sees(carolWeb, 'carol, on every device', 'the revoked browser\'s history');
  const cliSees = sotto('carol', 'history', names.alice, '--json');
  if (cliSees.includes('am I still here?')) fail('a revoked browser could still send');
  ok('revoking the browser device cuts it off');

  // What the browser stores: sealed records only, under keys no script can export.
  const stored = await bob.evaluate(async (texts) => {
    const req = (r) => new Promise((res, rej) => { r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
    const db = await req(indexedDB.open('sotto'));
    const values = await req(db.transaction('records').objectStore('records').getAll());
    const ids = await req(db.transaction('records').objectStore('records').getAllKeys());
    const keys = await req(db.transaction('keys').objectStore('keys').get('v1'));
    const enc = new TextEncoder();
    const blobs = values.flatMap((v) => [new Uint8Array(v.ct), new Uint8Array(v.iv)]).concat(ids.map((k) => enc.encode(String(k))));
    const has = (hay, needle) => {
      outer: for (let i = 0; i + needle.length <= hay.length; i++) {
        for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
        return true;
      }
      return false;
    };
    const found = texts.filter((t) => blobs.some((b) => has(b, enc.encode(t))));
    return {
      records: values.length,
      found,
      sealed: values.every((v) => v.ct instanceof ArrayBuffer && v.iv.length === 12),
      keys: [keys.seal, keys.name].map((k) => `${k.type}/${k.algorithm.name}/${k.extractable}`),
    };
  }, [...plaintexts, names.alice, names.carol]);
  if (stored.records < 10 || !stored.sealed) fail(`bob's IndexedDB is not what the vault writes: ${JSON.stringify(stored)}`);
  if (stored.found.length > 0) fail(`bob's IndexedDB holds in the clear: ${stored.found.join(', ')}`);
  if (stored.keys.join() !== 'secret/AES-GCM/false,secret/HMAC/false') fail(`bob's vault keys: ${stored.keys}`);
  ok(`the browser's IndexedDB holds ${stored.records} sealed records, no plaintext or name, under non-extractable keys`);

  if (problems.length > 0) fail(problems.join('\n'));
  ok('no CSP violation and no uncaught error on any page');
} finally {
  await browser.close();
  child.kill();
}

// 8. Nothing the server stores or logs contains the plaintext.
const files = [];
const walk = (d) => {
  for (const f of readdirSync(d)) {
    const p = join(d, f);
    if (statSync(p).isDirectory()) walk(p);
    else files.push(p);
  }
};
walk(join(work, 'server'));
files.push(log);
for (const f of files) {
  const body = readFileSync(f);
  for (const t of plaintexts) {
    if (body.includes(Buffer.from(t))) fail(`the server's ${f} contains "${t}"`);
  }
}
ok(`nothing the server stores or logs contains a plaintext (${files.length} files, ${plaintexts.length} texts)`);
console.log(`timings: ${JSON.stringify(timings)}`);
rmSync(work, { recursive: true, force: true });
console.log(`web e2e: ${checks.length} checks passed`);
