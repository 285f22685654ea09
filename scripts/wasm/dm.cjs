// A DM between two Sotto engines running inside WebAssembly (sotto-wasm, built by
// scripts/wasm-check), against a real sottod at process.argv[2]. Node performs the fetches the
// engines ask for; the engines do everything else. Exits non-zero unless the text arrives.
'use strict';
const path = require('path');
const assert = require('assert');
const { Device } = require(path.join(process.argv[3], 'sotto_wasm.js'));

const server = process.argv[2];

// Runs the operation started on `device` to its end, doing what it asks.
async function drive(device) {
  let answer = '';
  for (;;) {
    const op = JSON.parse(device.step(answer));
    switch (op.op) {
      case 'done':
        if (op.error !== undefined) throw new Error(`engine: ${op.error}`);
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
  const alice = new Device();
  const bob = new Device();
  const suffix = Math.floor(Math.random() * 1e9).toString(36);
  const [a, b] = [`wa${suffix}`, `wb${suffix}`];
  alice.startRegister(a, server);
  await drive(alice);
  bob.startRegister(b, server);
  await drive(bob);
  const t1 = performance.now();
  const text = 'hello from inside WebAssembly';
  alice.startSendDm(b, text);
  const sent = await drive(alice);
  assert.strictEqual(sent.text, text);
  bob.startSync();
  const warnings = await drive(bob);
  assert.deepStrictEqual(warnings, []);
  const got = JSON.parse(bob.takeUnshown());
  assert.strictEqual(got.length, 1, `bob got ${JSON.stringify(got)}`);
  assert.strictEqual(got[0].text, text);
  assert.strictEqual(got[0].sender, a);
  assert.strictEqual(got[0].id, sent.id);
  // And back.
  bob.startSendDm(a, 'and back');
  await drive(bob);
  alice.startSync();
  await drive(alice);
  const back = JSON.parse(alice.takeUnshown());
  assert.deepStrictEqual(back.map((m) => m.text), ['and back']);
  const t2 = performance.now();
  console.log(`wasm DM ok: register x2 ${(t1 - t0).toFixed(0)} ms, DM both ways ${(t2 - t1).toFixed(0)} ms`);
})().catch((e) => {
  console.error(`wasm DM FAILED: ${e.stack || e}`);
  process.exit(1);
});
