// The device's records at rest: IndexedDB, every record encrypted in the worker.
//
// Two keys, made once per browser profile by WebCrypto and stored as non-extractable CryptoKeys
// (script can use them, never read them): an AES-GCM-256 key that seals each record, and an
// HMAC-SHA-256 key that names it. A record's IndexedDB key is the HMAC of its engine key, so the
// database shows neither conversation ids nor message ids; its value is AES-GCM(engine key ||
// value) with a fresh 96-bit nonce and the IndexedDB key as associated data, so a record cannot
// be moved under another name. What this protects, and what it does not, is in DESIGN.md
// ("The web client"): it is not a defence against someone holding the whole browser profile.

const DB_NAME = 'sotto';
const DB_VERSION = 1;
const KEYS = 'keys';
const RECORDS = 'records';

interface Keys {
  seal: CryptoKey;
  name: CryptoKey;
}

interface Sealed {
  iv: Uint8Array<ArrayBuffer>;
  ct: ArrayBuffer;
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
  });
}

/** Standard base64 of some bytes. */
export function base64(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export class Vault {
  private constructor(
    private readonly db: IDBDatabase,
    private readonly keys: Keys,
  ) {}

  static async open(): Promise<Vault> {
    const open = indexedDB.open(DB_NAME, DB_VERSION);
    open.onupgradeneeded = () => {
      open.result.createObjectStore(KEYS);
      open.result.createObjectStore(RECORDS);
    };
    const db = await req(open);
    let keys = (await req(db.transaction(KEYS).objectStore(KEYS).get('v1'))) as Keys | undefined;
    if (keys === undefined) {
      keys = {
        seal: await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, [
          'encrypt',
          'decrypt',
        ]),
        name: await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-256' }, false, ['sign']),
      };
      const tx = db.transaction(KEYS, 'readwrite');
      // `add`, not `put`: if another worker made keys meanwhile, this fails instead of
      // replacing keys that sealed records.
      tx.objectStore(KEYS).add(keys, 'v1');
      await done(tx);
    }
    return new Vault(db, keys);
  }

  /** Every record, framed for `Device.restore`. A record that does not open is an error. */
  async load(): Promise<Uint8Array> {
    const tx = this.db.transaction(RECORDS);
    const store = tx.objectStore(RECORDS);
    const [ids, values] = await Promise.all([req(store.getAllKeys()), req(store.getAll())]);
    const parts: Uint8Array[] = [];
    let total = 0;
    // All at once: WebCrypto works on them in parallel, off this thread.
    const opened = await Promise.all(
      values.map((v, i) => {
        const sealed = v as Sealed;
        return crypto.subtle.decrypt(
          { name: 'AES-GCM', iv: sealed.iv, additionalData: new TextEncoder().encode(String(ids[i])) },
          this.keys.seal,
          sealed.ct,
        );
      }),
    ).catch(() => {
      throw new Error('a stored record does not open: the local database is damaged');
    });
    for (const plain of opened) {
      // plain = key length (u32 LE) || key || value; framed = that || value length || value.
      const p = new Uint8Array(plain);
      const klen = new DataView(plain).getUint32(0, true);
      const vlen = p.length - 4 - klen;
      if (vlen < 0) throw new Error('a stored record is cut short: the local database is damaged');
      const framed = new Uint8Array(p.length + 4);
      framed.set(p.subarray(0, 4 + klen), 0);
      new DataView(framed.buffer).setUint32(4 + klen, vlen, true);
      framed.set(p.subarray(4 + klen), 8 + klen);
      parts.push(framed);
      total += framed.length;
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Writes framed changes from `Device.takeChanges`, all in one IndexedDB transaction. */
  async store(changes: Uint8Array): Promise<void> {
    if (changes.length === 0) return;
    const view = new DataView(changes.buffer, changes.byteOffset, changes.byteLength);
    const puts: [string, Sealed][] = [];
    const deletes: string[] = [];
    let at = 0;
    while (at < changes.length) {
      const klen = view.getUint32(at, true);
      const key = changes.slice(at + 4, at + 4 + klen);
      const id = base64(new Uint8Array(await crypto.subtle.sign('HMAC', this.keys.name, key)));
      const vlen = view.getUint32(at + 4 + klen, true);
      if (vlen === 0xffffffff) {
        deletes.push(id);
        at += 8 + klen;
        continue;
      }
      const plain = new Uint8Array(4 + klen + vlen);
      plain.set(changes.subarray(at, at + 4 + klen), 0);
      plain.set(changes.subarray(at + 8 + klen, at + 8 + klen + vlen), 4 + klen);
      const iv = crypto.getRandomValues(new Uint8Array(12));
      const ct = await crypto.subtle.encrypt(
        { name: 'AES-GCM', iv, additionalData: new TextEncoder().encode(id) },
        this.keys.seal,
        plain,
      );
      plain.fill(0);
      puts.push([id, { iv, ct }]);
      at += 8 + klen + vlen;
    }
    // Everything is sealed before the transaction opens: IndexedDB commits a transaction as soon
    // as it has no request pending, so no await may come between its requests.
    // Strict: complete only once the data is on disk, not just handed to the OS, since the
    // request the engine asks for next may depend on it (the browsers' default is relaxed).
    const tx = this.db.transaction(RECORDS, 'readwrite', { durability: 'strict' });
    const store = tx.objectStore(RECORDS);
    for (const [id, sealed] of puts) store.put(sealed, id);
    for (const id of deletes) store.delete(id);
    await done(tx);
  }

  /** Forgets the device: its keys and its records, in one transaction. */
  async wipe(): Promise<void> {
    const tx = this.db.transaction([KEYS, RECORDS], 'readwrite', { durability: 'strict' });
    tx.objectStore(KEYS).clear();
    tx.objectStore(RECORDS).clear();
    await done(tx);
  }

  /** How many records are stored. */
  async count(): Promise<number> {
    return req(this.db.transaction(RECORDS).objectStore(RECORDS).count());
  }
}
