// A DM between two Sotto engines running inside WebAssembly (sotto-wasm, built by
// scripts/wasm-check), against a real sottod at process.argv[2]. Node performs the fetches the
// engines ask for; the engines do everything else. Exits non-zero unless the text arrives.
'use strict';
const path = require('path');
const assert = require('assert');
const { Device } = require(path.join(process.argv[3], 'sotto_wasm.js'));

const server = process.argv[2];

// What a host keeps of each device: its records, by key (hex), as the browser worker keeps them
// in IndexedDB. Written before every request the engine asks for, and at the end.
const disk = new Map();
function keep(device) {
  const b = device.takeChanges();
  const records = disk.get(device) ?? new Map();
  disk.set(device, records);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let at = 0;
  while (at < b.length) {
    const klen = view.getUint32(at, true);
    const key = Buffer.from(b.subarray(at + 4, at + 4 + klen)).toString('hex');
    at += 4 + klen;
    const vlen = view.getUint32(at, true);
    at += 4;
    if (vlen === 0xffffffff) {
      records.delete(key);
    } else {
      records.set(key, b.slice(at, at + vlen));
      at += vlen;
    }
  }
}
function reload(device) {
  const parts = [];
  for (const [key, value] of disk.get(device) ?? new Map()) {
    const k = Buffer.from(key, 'hex');
    const head = Buffer.alloc(4);
    head.writeUInt32LE(k.length);
    const vhead = Buffer.alloc(4);
    vhead.writeUInt32LE(value.length);
    parts.push(head, k, vhead, Buffer.from(value));
  }
  const again = Device.restore(Buffer.concat(parts));
  disk.set(again, disk.get(device));
  return again;
}

// Runs the operation started on `device` with `request` to its end, doing what it asks.
async function drive(device, request) {
  device.start(JSON.stringify(request));
  let answer = '';
  for (;;) {
    const op = JSON.parse(device.step(answer));
    if (op.op !== 'done') keep(device);
    switch (op.op) {
      case 'done':
        if (op.error !== undefined) throw new Error(`engine: ${op.error}`);
        keep(device);
        return op.ok;
      case 'now':
        answer = JSON.stringify({ now: Date.now() });
        break;
      case 'sleep':
        await new Promise((r) => setTimeout(r, op.ms));
        answer = JSON.stringify({ slept: true });
        break;
      case 'http': {
        const headers = {};
        if (op.bearer) headers.authorization = `Bearer ${op.bearer}`;
        if (op.body !== null && op.body !== undefined) headers['content-type'] = 'application/json';
        try {
          const resp = await fetch(server + op.path, { method: op.method, headers, body: op.body ?? undefined });
          answer = JSON.stringify({ status: resp.status, body: await resp.text() });
        } catch (e) {
          answer = JSON.stringify({ error: server });
        }
        break;
      }
      default:
        throw new Error(`unknown op ${op.op}`);
    }
  }
}

(async () => {
  const t0 = performance.now();
  let alice = new Device();
  let bob = new Device();
  const suffix = Math.floor(Math.random() * 1e9).toString(36);
  const [a, b] = [`wa${suffix}`, `wb${suffix}`];
  await drive(alice, { op: 'register', username: a, server });
  await drive(bob, { op: 'register', username: b, server });
  const t1 = performance.now();
  const text = 'hello from inside WebAssembly';
  const sent = await drive(alice, { op: 'sendDm', peer: b, text });
  assert.strictEqual(sent.text, text);
  // Both come back from their records alone, as after a reload of the page.
  alice = reload(alice);
  bob = reload(bob);
  assert.strictEqual(JSON.parse(bob.query('{"q":"me"}')).username, b);
  const report = await drive(bob, { op: 'sync' });
  assert.deepStrictEqual(report.warnings, []);
  const got = JSON.parse(bob.query('{"q":"takeUnshown"}'));
  assert.strictEqual(got.length, 1, `bob got ${JSON.stringify(got)}`);
  assert.strictEqual(got[0].text, text);
  assert.strictEqual(got[0].sender, a);
  assert.strictEqual(got[0].id, sent.id);
  // And back.
  await drive(bob, { op: 'sendDm', peer: a, text: 'and back' });
  await drive(alice, { op: 'sync' });
  const back = JSON.parse(alice.query('{"q":"takeUnshown"}'));
  assert.deepStrictEqual(back.map((m) => m.text), ['and back']);
  const list = JSON.parse(alice.query('{"q":"conversations"}'));
  assert.strictEqual(list.length, 1, JSON.stringify(list));
  assert.strictEqual(list[0].title, b);
  assert.strictEqual(list[0].last.text, 'and back');
  assert.strictEqual(list[0].unread, 1);
  const t2 = performance.now();
  console.log(`wasm DM ok: register x2 ${(t1 - t0).toFixed(0)} ms, DM both ways ${(t2 - t1).toFixed(0)} ms`);
})().catch((e) => {
  console.error(`wasm DM FAILED: ${e.stack || e}`);
  process.exit(1);
});
