// The page's side of the worker: typed calls, and events.
import type {
  ConversationLine,
  ConversationSettings,
  DeviceLine,
  FileData,
  GroupLine,
  HistoryMessage,
  Me,
  PageMessage,
  Query,
  Request,
  WorkerMessage,
} from './protocol';

/** An operation the engine or the server refused, or that could not reach the server. */
export class CallError extends Error {
  constructor(
    message: string,
    readonly refused: boolean,
  ) {
    super(message);
  }
}

/** A page message before it is numbered (distributes over the union). */
type Unnumbered<T> = T extends unknown ? Omit<T, 'id'> : never;

type Pending = { resolve: (v: unknown) => void; reject: (e: CallError) => void };

export class Client {
  private readonly worker: Worker;
  private next = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Set<(m: WorkerMessage) => void>();

  constructor() {
    this.worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' });
    this.worker.onmessage = (e: MessageEvent<WorkerMessage>) => {
      const m = e.data;
      if (m.kind === 'reply') {
        const p = this.pending.get(m.id);
        if (p === undefined) return;
        this.pending.delete(m.id);
        if ('error' in m) p.reject(new CallError(m.error, m.refused));
        else p.resolve(m.ok);
        return;
      }
      for (const l of this.listeners) l(m);
    };
  }

  on(listener: (m: WorkerMessage) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private call(m: Unnumbered<PageMessage>): Promise<unknown> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...m, id } as PageMessage);
    });
  }

  start(request: Request): Promise<unknown> {
    return this.call({ kind: 'start', request });
  }

  private query(query: Query): Promise<unknown> {
    return this.call({ kind: 'query', query });
  }

  me(): Promise<Me> {
    return this.query({ q: 'me' }) as Promise<Me>;
  }
  conversations(): Promise<ConversationLine[]> {
    return this.query({ q: 'conversations' }) as Promise<ConversationLine[]>;
  }
  /** The newest `limit` items of a conversation's history, oldest first. */
  history(conversation: string, limit: number): Promise<HistoryMessage[]> {
    return this.query({ q: 'history', conversation, limit }) as Promise<HistoryMessage[]>;
  }
  group(group: string): Promise<GroupLine> {
    return this.query({ q: 'group', group }) as Promise<GroupLine>;
  }
  settings(conversation: string): Promise<ConversationSettings> {
    return this.query({ q: 'settings', conversation }) as Promise<ConversationSettings>;
  }
  /** The conversation is on screen. */
  view(conversation: string): Promise<unknown> {
    return this.call({ kind: 'view', conversation });
  }
  /** The person left the conversation that was on screen. */
  leave(): Promise<unknown> {
    return this.call({ kind: 'leave' });
  }
  /** Encrypts, uploads and sends `file` in `conversation` (progress: `progress` events). */
  async upload(conversation: string, file: File, caption: string): Promise<unknown> {
    const data = await file.arrayBuffer();
    const preview = await previewOf(file);
    return this.call({ kind: 'upload', conversation, name: file.name, type: file.type, data, caption, preview });
  }
  /** The file a message carries, fetched and decrypted. */
  download(message: string): Promise<FileData> {
    return this.call({ kind: 'download', message }) as Promise<FileData>;
  }
  /** Forgets this device in this browser (its keys and records); the worker stops. */
  wipe(): Promise<unknown> {
    return this.call({ kind: 'wipe' });
  }
  devices(): Promise<DeviceLine[]> {
    return this.start({ op: 'devices' }) as Promise<DeviceLine[]>;
  }
}

/** Largest preview a message may carry (sotto_proto::MAX_PREVIEW_BYTES). */
const MAX_PREVIEW = 16 * 1024;

/** A small JPEG of an image file (at most 16 KiB, 160 px on its longer side), for the receiver
 *  to see before downloading; null for anything the browser cannot draw. */
async function previewOf(file: File): Promise<ArrayBuffer | null> {
  if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type)) return null;
  try {
    const bitmap = await createImageBitmap(file);
    for (const [side, quality] of [
      [160, 0.7],
      [120, 0.5],
      [80, 0.4],
    ] as const) {
      const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
      const canvas = new OffscreenCanvas(
        Math.max(1, Math.round(bitmap.width * scale)),
        Math.max(1, Math.round(bitmap.height * scale)),
      );
      canvas.getContext('2d')?.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      const blob = await canvas.convertToBlob({ type: 'image/jpeg', quality });
      if (blob.size <= MAX_PREVIEW) return blob.arrayBuffer();
    }
  } catch {
    // not an image the browser can decode: no preview
  }
  return null;
}
