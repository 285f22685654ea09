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

type Reply = (m: WorkerMessage) => void;

/** Runs a page's call on this worker's device (this worker holds it) and answers through
 *  `reply`: to its own page, or over the channel to another tab's. */
async function handle(m: PageMessage, reply: Reply): Promise<void> {
  const d = device;
  if (d === null) {
    reply({ kind: 'reply', id: m.id, error: 'the device is not open yet', refused: false });
    return;
  }
  try {
    if (m.kind === 'query') {
      // Views only: none of these queries changes a record.
      reply({ kind: 'reply', id: m.id, ok: JSON.parse(d.query(JSON.stringify(m.query))) });
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
    reply({ kind: 'reply', id: m.id, ok });
    await run(() => announce(d));
  } catch (e) {
    const refused = e instanceof EngineError && e.refused;
    const error = e instanceof Error ? e.message : String(e);
    reply({ kind: 'reply', id: m.id, error, refused });
    noteCutOff(e);
  }
}

// Several tabs. The worker that holds the lock (the holder) runs the device; every other tab's
// worker (a follower) sends its page's calls to the holder over a BroadcastChannel and passes
// the holder's answers and events back. The IndexedDB records are only ever written by the
// holder. When the holder's tab closes, the browser gives the lock to a waiting follower, which
// opens the device and carries on. A call the old holder never acknowledged is run by the new
// one; an operation it acknowledged and did not answer is answered with an error rather than run
// again (it may have reached the server).
type Wire =
  | { type: 'call'; from: string; msg: PageMessage }
  | { type: 'reply'; to: string; msg: WorkerMessage }
  | { type: 'ack'; to: string; id: number }
  | { type: 'event'; msg: WorkerMessage }
  | { type: 'hello'; from: string };

const TAB = crypto.randomUUID();
const channel = new BroadcastChannel('sotto-device');
let holder = false;
const inFlight = new Map<number, PageMessage>();
const acked = new Set<number>();
const early: PageMessage[] = [];

channel.onmessage = (e: MessageEvent<Wire>) => {
  const w = e.data;
  if (holder) {
    if (w.type === 'call') {
      channel.postMessage({ type: 'ack', to: w.from, id: w.msg.id } satisfies Wire);
      void handle(w.msg, (msg) => channel.postMessage({ type: 'reply', to: w.from, msg } satisfies Wire));
    } else if (w.type === 'hello' && device !== null) {
      channel.postMessage({ type: 'reply', to: w.from, msg: { kind: 'ready', me: me(device) } } satisfies Wire);
    }
    return;
  }
  if (w.type === 'ack' && w.to === TAB) {
    acked.add(w.id);
  } else if (w.type === 'reply' && w.to === TAB) {
    if (w.msg.kind === 'reply') {
      inFlight.delete(w.msg.id);
      acked.delete(w.msg.id);
    }
    self.postMessage(w.msg);
  } else if (w.type === 'event') {
    self.postMessage(w.msg);
  }
};

/** Events go to this worker's page and, from the holder, to every other tab. */
function post(m: WorkerMessage): void {
  self.postMessage(m);
  if (holder) channel.postMessage({ type: 'event', msg: m } satisfies Wire);
}

self.onmessage = (e: MessageEvent<PageMessage>) => {
  const m = e.data;
  if (holder && device !== null) {
    void handle(m, (r) => self.postMessage(r));
  } else if (holder) {
    early.push(m);
  } else {
    inFlight.set(m.id, m);
    channel.postMessage({ type: 'call', from: TAB, msg: m } satisfies Wire);
  }
};

async function start(): Promise<void> {
  await init({ module_or_path: fetch(wasmUrl, { integrity: __WASM_INTEGRITY__ }) });
  vault = await Vault.open();
  const records = await vault.load();
  device = records.length > 0 ? Device.restore(records) : new Device();
  const who = me(device);
  post({ kind: 'ready', me: who });
  // Calls this tab sent the old holder: views, and what it never received, are run here;
  // operations it received are not run twice.
  for (const m of inFlight.values()) {
    if (m.kind === 'query' || !acked.has(m.id)) void handle(m, (r) => self.postMessage(r));
    else
      self.postMessage({
        kind: 'reply',
        id: m.id,
        error: 'the tab that held Sotto closed while this was in progress: check whether it went through',
        refused: false,
      } satisfies WorkerMessage);
  }
  inFlight.clear();
  acked.clear();
  for (const m of early.splice(0)) void handle(m, (r) => self.postMessage(r));
  if (who.username !== null) connect(device);
}

if (!('locks' in navigator)) {
  self.postMessage({ kind: 'fatal', error: 'this browser has no Web Locks: Sotto needs a current browser' });
} else {
  // Ask whoever holds the device who we are; if nobody does, the lock below is ours at once.
  channel.postMessage({ type: 'hello', from: TAB } satisfies Wire);
  // Held until this worker ends (its tab closes or reloads); queued behind the holder otherwise.
  void navigator.locks.request(LOCK, async () => {
    holder = true;
    try {
      await start();
    } catch (e) {
      post({ kind: 'fatal', error: e instanceof Error ? e.message : String(e) });
    }
    await new Promise(() => undefined);
  });
}
