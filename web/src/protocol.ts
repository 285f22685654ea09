// The typed messages between the page and the worker, and the JSON the engine (sotto-wasm) takes
// and gives. The page never sees a key: it asks the worker for operations and reads views.

/** An operation that talks to the server (sotto-wasm `Request`). */
export type Request =
  | { op: 'register'; username: string; server: string }
  | { op: 'link'; code: string; server: string }
  | { op: 'sync' }
  | { op: 'sendDm'; peer: string; text: string }
  | { op: 'sendGroup'; group: string; text: string }
  | { op: 'openDm'; peer: string }
  | { op: 'createGroup'; name: string; members: string[] }
  | { op: 'groupAdd'; group: string; users: string[] }
  | { op: 'groupRemove'; group: string; users: string[] }
  | { op: 'groupLeave'; group: string }
  | { op: 'groupRename'; group: string; name: string }
  | { op: 'groupAdmin'; group: string; user: string }
  | { op: 'act'; message: string; action: Action }
  | { op: 'markRead'; conversation: string }
  | { op: 'typing'; conversation: string }
  | { op: 'devices' }
  | { op: 'revoke'; device: string }
  | { op: 'linkCode' }
  | { op: 'setTimer'; conversation: string; secs: number | null; afterRead: boolean }
  | { op: 'setVanish'; conversation: string; on: boolean }
  | { op: 'setReadReceipts'; on: boolean }
  | {
      op: 'sendFile';
      conversation: string;
      blob: string;
      key: string;
      hash: string;
      size: number;
      contentType: string;
      name: string;
      caption: string | null;
      /** A small JPEG or PNG, base64 (at most 16 KiB). */
      preview: string | null;
    }
  /** A frame pushed over the WebSocket (the worker's own use). */
  | { op: 'frame'; frame: unknown };

export type Action =
  | { kind: 'reply'; text: string }
  | { kind: 'react'; emoji: string }
  | { kind: 'unreact' }
  | { kind: 'edit'; text: string }
  | { kind: 'unsend' };

/** A read answered from the device's state (sotto-wasm `Query`). */
export type Query =
  | { q: 'me' }
  | { q: 'conversations' }
  | { q: 'history'; conversation: string; limit?: number }
  | { q: 'group'; group: string }
  | { q: 'settings'; conversation: string };

/** A conversation's disappearing settings. */
export interface ConversationSettings {
  timer: { secs: number; afterRead: boolean } | null;
  vanish: boolean;
  /** As the history says it: `timer set to 1 h after reading`, `vanish mode on, timer off`. */
  text: string;
}

export interface Me {
  username: string | null;
  device: string | null;
  server: string | null;
  /** Whether this account sends and shows read receipts (an account setting). */
  read_receipts?: boolean;
}

export interface Attachment {
  id: string;
  name: string;
  size: number;
  content_type: string;
  downloaded: boolean;
  /** The sender's small image, shown before the download. */
  preview?: { content_type: string; data: string };
}

/** A message as the history shows it now (sotto-engine `HistoryMessage`). */
export interface HistoryMessage {
  id: string;
  conversation: string;
  group: string | null;
  sender: string;
  sender_device: string;
  text: string | null;
  attachments: Attachment[];
  sent_at: string;
  reply_to: string | null;
  reactions: Record<string, string[]>;
  edits: number;
  deleted: boolean;
  content: 'message' | 'timer';
  expires_at: string | null;
  delivered_to: string[];
  read_by: string[];
  mentions_me: boolean;
  outgoing: boolean;
  /** Its place in the log; null until the server acknowledged it. */
  seq?: number | null;
  /** Set on an entry that did not decrypt, `waiting` or `failed` (then `id` is null and only
   *  the sender and the conversation are known). */
  undecryptable?: string;
}

export interface ConversationLine {
  id: string;
  kind: 'dm' | 'group';
  title: string;
  status: string;
  last: HistoryMessage | null;
  unread: number;
}

export interface GroupLine {
  id: string;
  name: string;
  admins: string[];
  members: [string, string[]][];
  post_quantum: boolean;
  epoch: number;
}

export interface DeviceLine {
  device: string;
  created_at: string;
  this_device: boolean;
  verified: boolean;
}

/** Page to worker. */
export type PageMessage =
  | { id: number; kind: 'start'; request: Request }
  | { id: number; kind: 'query'; query: Query }
  /** The conversation is on screen: its messages count as shown (after-read clocks start). */
  | { id: number; kind: 'view'; conversation: string }
  /** The person left the conversation on screen (vanish-mode messages that went through go). */
  | { id: number; kind: 'leave' }
  /** Forget this device in this browser: its keys and records. */
  | { id: number; kind: 'wipe' }
  /** Encrypt, upload and send a file; progress comes as `progress` events. */
  | {
      id: number;
      kind: 'upload';
      conversation: string;
      name: string;
      type: string;
      data: ArrayBuffer;
      caption: string;
      preview: ArrayBuffer | null;
    }
  /** Fetch and decrypt the file a message carries; the answer is a `FileData`. */
  | { id: number; kind: 'download'; message: string };

/** A downloaded, decrypted file. */
export interface FileData {
  name: string;
  type: string;
  data: ArrayBuffer;
}

/** Worker to page: an answer to one call, or an event. */
export type WorkerMessage =
  | { kind: 'reply'; id: number; ok: unknown }
  | { kind: 'reply'; id: number; error: string; refused: boolean }
  | { kind: 'ready'; me: Me }
  | { kind: 'fatal'; error: string }
  /** The server no longer accepts this device (revoked from another device, or the account was
   *  deleted). */
  | { kind: 'cutOff' }
  | { kind: 'changed' }
  | { kind: 'connection'; online: boolean; detail: string }
  | { kind: 'typing'; conversation: string; user: string }
  | { kind: 'progress'; conversation: string; name: string; sent: number; total: number };
