// The web client's worker: the only place that holds keys. It runs the engine (WebAssembly),
// performs the requests the engine asks for (fetch, the WebSocket), keeps the device's records in
// the vault, and answers the page's typed calls.
//
// Durability: after every step of an operation, the records it changed are written to the vault
// *before* the worker performs the request the step asked for, and before it answers the page.
// A tab closed at any point comes back to a state the server and the user could have seen.
//
// One tab at a time holds the device (a Web Lock): a second tab's worker waits, tells its page,
// and takes over when the first tab closes.

import init, { Device } from './wasm/sotto_wasm.js';
import wasmUrl from './wasm/sotto_wasm_bg.wasm?url';
import type { Incoming, PageMessage, Request, WorkerMessage } from './protocol';
import { Vault } from './vault';

declare const self: DedicatedWorkerGlobalScope;

const LOCK = 'sotto-device';
const SERVER = self.location.origin;

let device: Device | null = null;
let vault: Vault | null = null;
let socket: WebSocket | null = null;
let socketBackoff = 500;
// Operations run one after another: the engine steps one task at a time.
let queue: Promise<unknown> = Promise.resolve();

function post(m: WorkerMessage): void {
  self.postMessage(m);
}

async function persist(d: Device): Promise<void> {
  if (vault === null) throw new Error('the device store is not open');
  await vault.store(d.takeChanges());
}

interface Op {
  op: 'http' | 'sleep' | 'now' | 'done';
  method?: string;
  path?: string;
  body?: string | null;
  bearer?: string | null;
  ms?: number;
  ok?: unknown;
  error?: string;
  refused?: boolean;
  code?: string | null;
}

class EngineError extends Error {
  constructor(
    message: string,
    readonly refused: boolean,
    readonly code: string | null,
  ) {
    super(message);
  }
}

// Set once the server refuses this device's token: nothing is retried after that.
let cutOff = false;

function noteCutOff(e: unknown): void {
  if (e instanceof EngineError && e.code === 'unauthorized' && !cutOff) {
    cutOff = true;
    socket?.close();
    post({ kind: 'cutOff' });
  }
}

/** Runs one operation to its end. */
async function drive(d: Device, request: Request): Promise<unknown> {
  d.start(JSON.stringify(request));
  let answer = '';
  for (;;) {
    const op = JSON.parse(d.step(answer)) as Op;
    await persist(d);
    switch (op.op) {
      case 'done':
        if (op.error !== undefined) throw new EngineError(op.error, op.refused ?? false, op.code ?? null);
        return op.ok;
      case 'now':
        answer = JSON.stringify({ now: Date.now() });
        break;
      case 'sleep':
        await new Promise((r) => setTimeout(r, op.ms ?? 0));
        answer = JSON.stringify({ slept: true });
        break;
      case 'http': {
        const headers: Record<string, string> = {};
        if (op.bearer) headers['authorization'] = `Bearer ${op.bearer}`;
        if (op.body !== null && op.body !== undefined) headers['content-type'] = 'application/json';
        try {
          const init: RequestInit = { method: op.method ?? 'GET', headers, credentials: 'omit' };
          if (op.body !== null && op.body !== undefined) init.body = op.body;
          const resp = await fetch(SERVER + (op.path ?? '/'), init);
          answer = JSON.stringify({ status: resp.status, body: await resp.text() });
        } catch {
          answer = JSON.stringify({ error: SERVER });
        }
        break;
      }
    }
  }
}

function run<T>(f: () => Promise<T>): Promise<T> {
  const next = queue.then(f, f);
  queue = next.catch(() => undefined);
  return next;
}

function me(d: Device): { username: string | null; device: string | null; server: string | null } {
  return JSON.parse(d.query('{"q":"me"}'));
}

/** After anything that may have brought messages: tell the page, and what arrived. (Taking them
 *  marks them shown, a change that is stored like any other.) */
async function announce(d: Device): Promise<void> {
  const incoming = JSON.parse(d.query('{"q":"takeUnshown"}')) as Incoming[];
  d.query('{"q":"takeUpdates"}');
  await persist(d);
  if (incoming.length > 0) post({ kind: 'incoming', messages: incoming });
  post({ kind: 'changed' });
}

interface Report {
  warnings?: string[];
  updates?: { type: string; conversation?: string; user?: string }[];
}

function typingFrom(report: unknown): void {
  for (const u of (report as Report | null)?.updates ?? []) {
    if (u.type === 'typing' && u.conversation !== undefined && u.user !== undefined) {
      post({ kind: 'typing', conversation: u.conversation, user: u.user });
    }
  }
}

function connect(d: Device): void {
  const token = d.pushToken();
  if (token === undefined || cutOff) return;
  const url = SERVER.replace(/^http/, 'ws') + '/v1/ws';
  const ws = new WebSocket(url, ['sotto.v1', 'sotto.bearer.' + token.replace(':', '.')]);
  socket = ws;
  let acks: ReturnType<typeof setInterval> | undefined;
  ws.onopen = () => {
    socketBackoff = 500;
    post({ kind: 'connection', online: true, detail: 'connected' });
    // Whatever came while offline.
    void run(async () => {
      await drive(d, { op: 'sync' });
      await announce(d);
    }).catch(noteCutOff);
    acks = setInterval(() => {
      if (ws.readyState !== WebSocket.OPEN) return;
      for (const frame of JSON.parse(d.query('{"q":"readAcks"}')) as unknown[]) {
        ws.send(JSON.stringify(frame));
      }
    }, 1000);
  };
  ws.onmessage = (e: MessageEvent) => {
    if (typeof e.data !== 'string') return;
    let frame: unknown;
    try {
      frame = JSON.parse(e.data);
    } catch {
      return;
    }
    void run(async () => {
      const report = await drive(d, { op: 'frame', frame });
      typingFrom(report);
      await announce(d);
    }).catch((err: unknown) => {
      noteCutOff(err);
      post({ kind: 'connection', online: true, detail: String(err) });
    });
  };
  ws.onclose = () => {
    if (acks !== undefined) clearInterval(acks);
    if (socket !== ws) return;
    socket = null;
    if (cutOff) return;
    post({ kind: 'connection', online: false, detail: 'server unreachable: reconnecting' });
    setTimeout(() => connect(d), socketBackoff);
    socketBackoff = Math.min(socketBackoff * 2, 15000);
  };
}

async function handle(m: PageMessage): Promise<void> {
  const d = device;
  if (d === null) {
    post({ kind: 'reply', id: m.id, error: 'the device is not open yet', refused: false });
    return;
  }
  try {
    if (m.kind === 'query') {
      // Views only: none of these queries changes a record.
      post({ kind: 'reply', id: m.id, ok: JSON.parse(d.query(JSON.stringify(m.query))) });
      return;
    }
    const request: Request =
      m.request.op === 'register' || m.request.op === 'link'
        ? { ...m.request, server: SERVER }
        : m.request;
    const ok = await run(() => drive(d, request));
    typingFrom(ok);
    if (request.op === 'register' || request.op === 'link') {
      post({ kind: 'ready', me: me(d) });
      connect(d);
    }
    post({ kind: 'reply', id: m.id, ok });
    await run(() => announce(d));
  } catch (e) {
    const refused = e instanceof EngineError && e.refused;
    const error = e instanceof Error ? e.message : String(e);
    post({ kind: 'reply', id: m.id, error, refused });
    noteCutOff(e);
  }
}

const early: PageMessage[] = [];
self.onmessage = (e: MessageEvent<PageMessage>) => {
  if (device === null) early.push(e.data);
  else void handle(e.data);
};

async function start(): Promise<void> {
  await init({ module_or_path: fetch(wasmUrl, { integrity: __WASM_INTEGRITY__ }) });
  vault = await Vault.open();
  const records = await vault.load();
  device = records.length > 0 ? Device.restore(records) : new Device();
  const who = me(device);
  post({ kind: 'ready', me: who });
  for (const m of early.splice(0)) void handle(m);
  if (who.username !== null) connect(device);
}

if (!('locks' in navigator)) {
  post({ kind: 'fatal', error: 'this browser has no Web Locks: Sotto needs a current browser' });
} else {
  let holding = false;
  setTimeout(() => {
    if (!holding) post({ kind: 'waiting' });
  }, 300);
  // The lock is held until this worker ends (its tab closes or reloads).
  void navigator.locks.request(LOCK, async () => {
    holding = true;
    try {
      await start();
    } catch (e) {
      post({ kind: 'fatal', error: e instanceof Error ? e.message : String(e) });
    }
    await new Promise(() => undefined);
  });
}
