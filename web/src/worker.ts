// The web client's worker: the only place that holds keys. It runs the engine (WebAssembly),
// performs the requests the engine asks for (fetch, the WebSocket), keeps the device's records in
// the vault, and answers the page's typed calls.
//
// Durability: after every step of an operation, the records it changed are written to the vault
// (an IndexedDB transaction with strict durability) *before* the worker performs the request the
// step asked for, and before it answers the page. Read positions go to the server only from the
// operation queue, after what they report is stored. If a write fails, the worker stops: its
// memory is then ahead of the disk, and only a reload (from the disk) is safe.
//
// Several tabs: the worker that holds the Web Lock (the holder) runs the device; the others
// (followers) forward their page's calls to it over a BroadcastChannel (see the end of the file).

import init, { Device } from './wasm/sotto_wasm.js';
import wasmUrl from './wasm/sotto_wasm_bg.wasm?url';
import type { FileData, Me, PageMessage, Request, WorkerMessage } from './protocol';
import { base64, Vault } from './vault';

declare const self: DedicatedWorkerGlobalScope;

const LOCK = 'sotto-device';
const SERVER = self.location.origin;

let device: Device | null = null;
let vault: Vault | null = null;
let socket: WebSocket | null = null;
let socketBackoff = 500;
// Operations run one after another: the engine steps one task at a time.
let queue: Promise<unknown> = Promise.resolve();
// Set once the server refuses this device's token: nothing is retried after that.
let cutOff = false;
// Set once a write to the vault failed: the worker does nothing more.
let stopped = false;

/** Stops this worker for good with a message for the page: the holder's lock goes with it, so
 *  another tab (or a reload) starts again from what is stored. */
function stop(error: string): void {
  stopped = true;
  socket?.close();
  post({ kind: 'fatal', error });
  self.close();
}

/** Stores what the engine changed; returns whether anything had. */
async function persist(d: Device): Promise<boolean> {
  if (vault === null) throw new Error('the device store is not open');
  const changes = d.takeChanges();
  try {
    await vault.store(changes);
  } catch (e) {
    const why =
      `this browser could not save Sotto's data (${e instanceof Error ? e.name : 'error'}); ` +
      'free some space or allow storage for this site, then reload';
    stop(why);
    throw new Error(why);
  }
  return changes.length > 0;
}

function nowSecs(): number {
  return Math.floor(Date.now() / 1000);
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
  if (stopped) return Promise.reject(new Error('Sotto stopped in this tab: reload it'));
  const next = queue.then(f, f);
  queue = next.catch(() => undefined);
  return next;
}

function me(d: Device): Me {
  return JSON.parse(d.query('{"q":"me"}')) as Me;
}

/** After anything that may have changed what the page shows. Reactions, edits and receipts are
 *  marked shown here (the page reads them from the history); messages stay unshown until their
 *  conversation is on screen (`view`), so that after-read timers start when they can be read. */
async function announce(d: Device): Promise<void> {
  d.query('{"q":"takeUpdates"}');
  await persist(d);
  post({ kind: 'changed' });
}

/** Deletes what has expired (and, `leaving`, what vanish mode lets go); tells the page if
 *  anything went. */
async function expire(d: Device, leaving: boolean): Promise<void> {
  d.purge(nowSecs(), leaving);
  if (await persist(d)) post({ kind: 'changed' });
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

/** Catches up, then tells the page. A refused token marks the device cut off. */
function syncNow(d: Device): void {
  void run(async () => {
    await drive(d, { op: 'sync' });
    await announce(d);
  }).catch(noteCutOff);
}

function connect(d: Device): void {
  const token = d.pushToken();
  if (token === undefined || cutOff || stopped) return;
  const url = SERVER.replace(/^http/, 'ws') + '/v1/ws';
  const ws = new WebSocket(url, ['sotto.v1', 'sotto.bearer.' + token.replace(':', '.')]);
  socket = ws;
  let opened = false;
  let acks: ReturnType<typeof setInterval> | undefined;
  ws.onopen = () => {
    opened = true;
    socketBackoff = 500;
    post({ kind: 'connection', online: true, detail: 'connected' });
    // Whatever came while offline.
    syncNow(d);
    // Read positions, from the queue: what they report has been stored by then.
    acks = setInterval(() => {
      void run(async () => {
        if (ws.readyState !== WebSocket.OPEN) return;
        for (const frame of JSON.parse(d.query('{"q":"readAcks"}')) as unknown[]) {
          ws.send(JSON.stringify(frame));
        }
      }).catch(() => undefined);
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
    if (cutOff || stopped) return;
    // A refused upgrade only closes the socket; a sync says whether the token still works.
    if (!opened) syncNow(d);
    post({ kind: 'connection', online: false, detail: 'server unreachable: reconnecting' });
    setTimeout(() => connect(d), socketBackoff);
    socketBackoff = Math.min(socketBackoff * 2, 15000);
  };
}

type Reply = (m: WorkerMessage) => void;

/** The largest file the browser sends for now: it is encrypted in memory, whole. */
const MAX_UPLOAD = 64 * 1024 * 1024;
/** Bytes per tus PATCH. */
const PATCH_BYTES = 8 * 1024 * 1024;

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** The server's reason for refusing a request, from its JSON error body. */
async function refusal(resp: Response, what: string): Promise<Error> {
  let reason = `HTTP ${resp.status}`;
  try {
    const body = (await resp.json()) as { message?: unknown };
    if (typeof body.message === 'string') reason = body.message;
  } catch {
    // not JSON: the status says enough
  }
  return new Error(`${what}: server refused: ${reason}`);
}

/** Encrypts a file, uploads the blob (tus, in PATCHes, telling the page how far it got), and
 *  sends the message that carries it. */
async function upload(d: Device, m: Extract<PageMessage, { kind: 'upload' }>): Promise<unknown> {
  if (m.data.byteLength > MAX_UPLOAD) {
    throw new Error(`${m.name} is over 64 MB: the browser sends files up to 64 MB for now (the command line sends up to 2 GB)`);
  }
  const token = d.pushToken();
  if (token === undefined) throw new Error('this browser is not registered');
  const sealed = Device.encryptFile(new Uint8Array(m.data));
  const key = hex(sealed.subarray(0, 32));
  const hash = hex(sealed.subarray(32, 64));
  const blob = sealed.subarray(64);
  const auth = { authorization: `Bearer ${token}`, 'tus-resumable': '1.0.0' };
  let created: Response;
  try {
    created = await fetch(`${SERVER}/v1/blobs`, {
      method: 'POST',
      credentials: 'omit',
      headers: { ...auth, 'upload-length': String(blob.length), 'upload-metadata': `conversation ${btoa(m.conversation)}` },
    });
  } catch {
    throw new Error(`server unreachable at ${SERVER}`);
  }
  if (created.status !== 201) throw await refusal(created, `${m.name} was not sent`);
  const id = (created.headers.get('location') ?? '').split('/').pop() ?? '';
  let offset = 0;
  while (offset < blob.length) {
    const end = Math.min(offset + PATCH_BYTES, blob.length);
    let resp: Response;
    try {
      resp = await fetch(`${SERVER}/v1/blobs/${id}`, {
        method: 'PATCH',
        credentials: 'omit',
        headers: { ...auth, 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' },
        body: blob.slice(offset, end),
      });
    } catch {
      throw new Error(`server unreachable at ${SERVER} while sending ${m.name}`);
    }
    if (resp.status !== 204) throw await refusal(resp, `${m.name} was not sent`);
    offset = Number(resp.headers.get('upload-offset') ?? end);
    post({ kind: 'progress', conversation: m.conversation, name: m.name, sent: offset, total: blob.length });
  }
  return run(() =>
    drive(d, {
      op: 'sendFile',
      conversation: m.conversation,
      blob: id,
      key,
      hash,
      size: m.data.byteLength,
      contentType: m.type || 'application/octet-stream',
      name: m.name,
      caption: m.caption === '' ? null : m.caption,
      preview: m.preview === null ? null : base64(new Uint8Array(m.preview)),
    }),
  );
}

/** Fetches the blob of a message's file and opens it with the key this device holds. */
async function download(d: Device, message: string): Promise<FileData> {
  const info = JSON.parse(d.query(JSON.stringify({ q: 'attachment', message }))) as {
    blob: string;
    content_type: string;
    name: string;
  } | null;
  if (info === null) throw new Error('that message carries no file on this device');
  const token = d.pushToken();
  let resp: Response;
  try {
    resp = await fetch(`${SERVER}/v1/blobs/${info.blob}`, {
      credentials: 'omit',
      headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    });
  } catch {
    throw new Error(`server unreachable at ${SERVER}`);
  }
  if (resp.status !== 200) throw await refusal(resp, `${info.name} could not be fetched`);
  const file = d.decryptFile(message, new Uint8Array(await resp.arrayBuffer()));
  return { name: info.name, type: info.content_type, data: file.buffer as ArrayBuffer };
}

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
      // Views only: none of these queries changes a record. (A view can show a commit a few
      // milliseconds before it is stored; if the tab dies then, the entry is fetched again.)
      reply({ kind: 'reply', id: m.id, ok: JSON.parse(d.query(JSON.stringify(m.query))) });
      return;
    }
    if (m.kind === 'view' || m.kind === 'leave') {
      await run(async () => {
        if (m.kind === 'view') d.showConversation(m.conversation, nowSecs());
        await expire(d, m.kind === 'leave');
      });
      reply({ kind: 'reply', id: m.id, ok: null });
      return;
    }
    if (m.kind === 'upload') {
      reply({ kind: 'reply', id: m.id, ok: await upload(d, m) });
      await run(() => announce(d));
      return;
    }
    if (m.kind === 'download') {
      reply({ kind: 'reply', id: m.id, ok: await download(d, m.message) });
      return;
    }
    if (m.kind === 'wipe') {
      await run(async () => {
        socket?.close();
        cutOff = true;
        await vault?.wipe();
      });
      reply({ kind: 'reply', id: m.id, ok: null });
      stop('Sotto was removed from this browser: reload to start again');
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
// holder. The holder acknowledges each call as it receives it. When the holder's tab closes, the
// browser gives the lock to a waiting follower, which opens the device and announces itself.
// Then every follower sends again the calls nobody acknowledged, and answers the operations that
// were acknowledged but not answered with an error rather than running them twice (they may have
// reached the server); views are asked again.
type Wire =
  | { type: 'call'; from: string; msg: PageMessage }
  | { type: 'ack'; to: string; id: number }
  | { type: 'reply'; to: string; msg: WorkerMessage }
  | { type: 'event'; msg: WorkerMessage }
  | { type: 'holder' }
  | { type: 'hello'; from: string };

const TAB = crypto.randomUUID();
const channel = new BroadcastChannel('sotto-device');
let holder = false;
// This tab's calls sent to the holder and not answered yet, and which of them it acknowledged.
const inFlight = new Map<number, PageMessage>();
const acked = new Set<number>();
// Calls that arrived while this worker held the lock but had not opened the device yet.
const early: { m: PageMessage; reply: Reply }[] = [];

const LOST = 'the tab that held Sotto closed while this was in progress: check whether it went through';

/** After a hand-over: what to do with this tab's unanswered calls. `local`: this tab is the new
 *  holder (run them here); otherwise send them to the new holder. */
function resend(local: boolean): void {
  for (const m of [...inFlight.values()]) {
    if (m.kind !== 'query' && acked.has(m.id)) {
      inFlight.delete(m.id);
      self.postMessage({ kind: 'reply', id: m.id, error: LOST, refused: false } satisfies WorkerMessage);
    } else if (local) {
      inFlight.delete(m.id);
      void handle(m, (r) => self.postMessage(r));
    } else {
      channel.postMessage({ type: 'call', from: TAB, msg: m } satisfies Wire);
    }
  }
  acked.clear();
}

channel.onmessage = (e: MessageEvent<Wire>) => {
  const w = e.data;
  // Answers to this tab's calls, whatever it is now (a late answer from the old holder).
  if (w.type === 'ack' && w.to === TAB) {
    if (inFlight.has(w.id)) acked.add(w.id);
    return;
  }
  if (w.type === 'reply' && w.to === TAB) {
    if (w.msg.kind === 'reply') {
      if (!inFlight.delete(w.msg.id)) return; // answered already
      acked.delete(w.msg.id);
    }
    self.postMessage(w.msg);
    return;
  }
  if (holder) {
    if (w.type === 'call') {
      channel.postMessage({ type: 'ack', to: w.from, id: w.msg.id } satisfies Wire);
      const reply: Reply = (msg) => channel.postMessage({ type: 'reply', to: w.from, msg } satisfies Wire);
      if (device === null) early.push({ m: w.msg, reply });
      else void handle(w.msg, reply);
    } else if (w.type === 'hello' && device !== null) {
      channel.postMessage({ type: 'reply', to: w.from, msg: { kind: 'ready', me: me(device) } } satisfies Wire);
    }
    return;
  }
  if (w.type === 'event') self.postMessage(w.msg);
  else if (w.type === 'holder') resend(false);
};

/** Events go to this worker's page and, from the holder, to every other tab. */
function post(m: WorkerMessage): void {
  self.postMessage(m);
  if (holder) channel.postMessage({ type: 'event', msg: m } satisfies Wire);
}

self.onmessage = (e: MessageEvent<PageMessage>) => {
  const m = e.data;
  if (stopped) {
    self.postMessage({ kind: 'reply', id: m.id, error: 'Sotto stopped in this tab: reload it', refused: false });
  } else if (holder && device !== null) {
    void handle(m, (r) => self.postMessage(r));
  } else if (holder) {
    early.push({ m, reply: (r) => self.postMessage(r) });
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
  channel.postMessage({ type: 'holder' } satisfies Wire);
  resend(true);
  for (const { m, reply } of early.splice(0)) void handle(m, reply);
  if (who.username !== null) connect(device);
  // Disappearing messages go on time whether or not anything else happens.
  const d = device;
  setInterval(() => {
    const next = d.nextExpiry();
    if (next !== undefined && next <= nowSecs()) void run(() => expire(d, false)).catch(() => undefined);
  }, 1000);
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
      // Give the lock up (by ending this worker), so that the device is not held by nobody.
      if (!stopped) stop(e instanceof Error ? e.message : String(e));
    }
    await new Promise(() => undefined);
  });
}
