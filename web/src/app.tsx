// The web client's page. It holds no key: every operation goes to the worker (client.ts).
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import type { JSX } from 'preact';
import { CallError, type Client } from './client';
import type { Attachment, ConversationLine, ConversationSettings, DeviceLine, GroupLine, HistoryMessage, Me } from './protocol';
import { qrPath } from './qr';

type Phase = 'loading' | 'fatal' | 'ready';

/** How many messages a conversation shows at first, and how many more each time. */
const PAGE = 200;

/** A message in one line, for the conversation list. */
function preview(m: HistoryMessage): string {
  if (m.deleted) return 'Message deleted';
  const file = m.attachments[0];
  if (file !== undefined) return m.text ? `📎 ${file.name}: ${m.text}` : `📎 ${file.name}`;
  return m.text ?? '';
}

function describe(e: unknown): string {
  if (e instanceof CallError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

function time(rfc3339: string): string {
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function names(s: string): string[] {
  return s
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}

export function App({ client }: { client: Client }): JSX.Element {
  const [phase, setPhase] = useState<Phase>('loading');
  const [fatal, setFatal] = useState('');
  const [me, setMe] = useState<Me | null>(null);
  const [error, setError] = useState('');
  const [online, setOnline] = useState<string>('');
  const [conversations, setConversations] = useState<ConversationLine[]>([]);
  const [open, setOpen] = useState<string | null>(null);
  const [panel, setPanel] = useState<'chat' | 'devices'>('chat');
  const [tick, setTick] = useState(0);
  const [typing, setTyping] = useState<Record<string, { user: string; until: number }>>({});
  const [cutOff, setCutOff] = useState(false);

  const act = useCallback(
    async <T,>(f: () => Promise<T>): Promise<T | undefined> => {
      setError('');
      try {
        return await f();
      } catch (e) {
        setError(describe(e));
        return undefined;
      }
    },
    [],
  );

  useEffect(
    () =>
      client.on((m) => {
        switch (m.kind) {
          case 'ready':
            setMe(m.me);
            setPhase('ready');
            break;
          case 'fatal':
            setFatal(m.error);
            setPhase('fatal');
            break;
          case 'cutOff':
            setCutOff(true);
            break;
          case 'changed':
            setTick((t) => t + 1);
            break;
          case 'connection':
            setOnline(m.online ? '' : m.detail);
            break;
          case 'typing':
            setTyping((t) => ({ ...t, [m.conversation]: { user: m.user, until: Date.now() + 6000 } }));
            setTimeout(() => setTick((x) => x + 1), 6100);
            break;
        }
      }),
    [client],
  );

  const lastSeen = useRef({ ids: new Map<string, string>(), ready: false });
  useEffect(() => {
    if (phase !== 'ready' || me?.username == null) return;
    void client.conversations().then((list) => {
      notify(list, lastSeen.current);
      setConversations(list);
    }, (e: unknown) => setError(describe(e)));
  }, [client, phase, me, tick]);

  if (phase === 'loading') return <main class="center"><p role="status">Opening Sotto…</p></main>;
  if (phase === 'fatal')
    return (
      <main class="center">
        <p role="alert">Sotto cannot start here: {fatal}</p>
      </main>
    );
  if (me?.username == null)
    return <Welcome client={client} act={act} error={error} onReady={(m) => setMe(m)} />;

  const current = conversations.find((c) => c.id === open) ?? null;
  return (
    <div class={`shell ${open !== null || panel !== 'chat' ? 'has-open' : ''}`}>
      <aside class="sidebar" aria-label="Conversations and account">
        <header class="me">
          <span>
            Signed in as <strong data-testid="me">{me.username}</strong>
          </span>
          <button type="button" onClick={() => { setPanel('devices'); setOpen(null); }}>
            Devices
          </button>
        </header>
        <NotificationsButton />
        <NewChat
          client={client}
          act={act}
          onOpen={(id) => { setPanel('chat'); setOpen(id); setTick((t) => t + 1); }}
        />
        <nav aria-label="Conversations">
          <ul class="conversations">
            {conversations.map((c) => (
              <li key={c.id}>
                <button
                  type="button"
                  class={c.id === open ? 'active' : ''}
                  aria-current={c.id === open ? 'true' : undefined}
                  onClick={() => { setPanel('chat'); setOpen(c.id); }}
                >
                  <span class="title">
                    {c.kind === 'group' ? '# ' : ''}
                    {c.title !== '' ? c.title : `group ${c.id.slice(0, 8)}`}
                  </span>
                  {c.unread > 0 && (
                    <span class="badge" aria-label={`${c.unread} unread`}>
                      {c.unread}
                    </span>
                  )}
                  <span class="preview">
                    {c.last === null
                      ? 'No messages yet'
                      : `${c.last.outgoing ? 'You' : c.last.sender}: ${preview(c.last)}`}
                  </span>
                </button>
              </li>
            ))}
          </ul>
        </nav>
      </aside>
      <main class="pane">
        {cutOff && (
          <p class="error" role="alert">
            This browser is no longer one of {me.username}'s devices: it was revoked from another device, or
            the account was deleted. What it shows here stays readable, but it can no longer send or receive.
            To use Sotto here again, remove it from this browser and link the browser anew.{' '}
            <button
              type="button"
              class="danger"
              onClick={() => void client.wipe().finally(() => window.location.reload())}
            >
              Remove Sotto from this browser
            </button>
          </p>
        )}
        {online !== '' && !cutOff && (
          <p class="offline" role="status">
            Offline: {online}
          </p>
        )}
        {error !== '' && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        {panel === 'devices' ? (
          <Devices client={client} act={act} onBack={() => setPanel('chat')} />
        ) : current !== null ? (
          <Conversation
            key={current.id}
            client={client}
            act={act}
            line={current}
            me={me.username}
            tick={tick}
            typing={typing[current.id]}
            onBack={() => setOpen(null)}
            onGone={() => setOpen(null)}
          />
        ) : (
          <p class="hint">Pick a conversation, or start one with someone's username.</p>
        )}
      </main>
    </div>
  );
}

type Act = <T>(f: () => Promise<T>) => Promise<T | undefined>;

function Welcome(props: { client: Client; act: Act; error: string; onReady: (m: Me) => void }): JSX.Element {
  const { client, act } = props;
  const [username, setUsername] = useState('');
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const go = async (e: Event, request: 'register' | 'link') => {
    e.preventDefault();
    setBusy(true);
    await act(async () => {
      if (request === 'register') await client.start({ op: 'register', username, server: '' });
      else await client.start({ op: 'link', code: code.trim(), server: '' });
      props.onReady(await client.me());
    });
    setBusy(false);
  };
  return (
    <main class="center welcome">
      <h1>Sotto</h1>
      <p>End-to-end encrypted messages. Your keys stay in this browser.</p>
      {props.error !== '' && (
        <p class="error" role="alert">
          {props.error}
        </p>
      )}
      <form onSubmit={(e) => void go(e, 'register')} aria-label="Create an account">
        <h2>New here</h2>
        <label for="username">Username</label>
        <input
          id="username"
          autocomplete="username"
          value={username}
          onInput={(e) => setUsername(e.currentTarget.value)}
          required
        />
        <button type="submit" disabled={busy}>
          Create account
        </button>
      </form>
      <form onSubmit={(e) => void go(e, 'link')} aria-label="Link this browser">
        <h2>Already use Sotto on another device</h2>
        <label for="code">Link code from that device</label>
        <input id="code" value={code} onInput={(e) => setCode(e.currentTarget.value)} required />
        <button type="submit" disabled={busy}>
          Link this browser
        </button>
      </form>
      {busy && <p role="status">Working… (creating keys and talking to the server)</p>}
    </main>
  );
}

function NotificationsButton(): JSX.Element | null {
  const [state, setState] = useState(typeof Notification === 'undefined' ? 'denied' : Notification.permission);
  if (state !== 'default') return null;
  return (
    <button
      type="button"
      class="notify"
      onClick={() => void Notification.requestPermission().then(setState)}
    >
      Notify me of new messages
    </button>
  );
}

/** While the tab is hidden, a notification for each conversation whose newest message is new
 *  and not this account's (after the permission was asked for and given). It names the sender
 *  and the conversation, not the text: the system keeps notifications, on the lock screen too.
 *  `seen` remembers each conversation's newest message from one list to the next; the first list
 *  after the page opens only fills it. */
function notify(list: ConversationLine[], seen: { ids: Map<string, string>; ready: boolean }): void {
  for (const c of list) {
    const last = c.last;
    if (last === null || seen.ids.get(c.id) === last.id) continue;
    seen.ids.set(c.id, last.id);
    if (!seen.ready || last.outgoing || !document.hidden) continue;
    if (typeof Notification === 'undefined' || Notification.permission !== 'granted') continue;
    new Notification('Sotto', {
      body: c.kind === 'group' ? `New message from ${last.sender} in ${c.title}` : `New message from ${last.sender}`,
      tag: c.id,
    });
  }
  seen.ready = true;
}

function until(rfc3339: string): string {
  const left = Math.round((new Date(rfc3339).getTime() - Date.now()) / 1000);
  if (Number.isNaN(left)) return '';
  if (left <= 0) return 'disappearing now';
  if (left < 120) return `disappears in ${left} s`;
  if (left < 7200) return `disappears in ${Math.round(left / 60)} min`;
  if (left < 172800) return `disappears in ${Math.round(left / 3600)} h`;
  return `disappears in ${Math.round(left / 86400)} days`;
}

const TIMERS: [string, number | null][] = [
  ['Off', null],
  ['30 seconds', 30],
  ['5 minutes', 300],
  ['1 hour', 3600],
  ['1 day', 86400],
  ['1 week', 604800],
  ['4 weeks', 2419200],
];

function Disappearing(props: { client: Client; act: Act; line: ConversationLine; tick: number }): JSX.Element {
  const { client, act, line } = props;
  const [settings, setSettings] = useState<ConversationSettings | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    void client.settings(line.id).then(setSettings, () => undefined);
  }, [client, line.id, props.tick]);
  if (settings === null) return <></>;
  const reload = () => void client.settings(line.id).then(setSettings, () => undefined);
  const change = async (secs: number | null, afterRead: boolean) => {
    setBusy(true);
    await act(() => client.start({ op: 'setTimer', conversation: line.id, secs, afterRead }));
    setBusy(false);
    reload();
  };
  return (
    <section class="disappearing" aria-label="Disappearing messages">
      <p>
        Disappearing messages: <strong data-testid="timer">{settings.text}</strong>
      </p>
      <label for="timer">Timer (for everyone in this conversation)</label>
      <select
        id="timer"
        disabled={busy}
        value={String(settings.timer?.secs ?? '')}
        onChange={(e) => {
          const v = e.currentTarget.value;
          void change(v === '' ? null : Number(v), settings.timer?.afterRead ?? false);
        }}
      >
        {TIMERS.map(([name, secs]) => (
          <option key={name} value={secs === null ? '' : String(secs)}>
            {name}
          </option>
        ))}
        {settings.timer !== null && !TIMERS.some(([, s]) => s === settings.timer?.secs) && (
          <option value={String(settings.timer.secs)}>{settings.timer.secs} seconds</option>
        )}
      </select>
      {settings.timer !== null && (
        <label class="inline">
          <input
            type="checkbox"
            disabled={busy}
            checked={settings.timer.afterRead}
            onChange={(e) => void change(settings.timer?.secs ?? null, e.currentTarget.checked)}
          />{' '}
          Count from when each person reads it
        </label>
      )}
      {line.kind === 'dm' && (
        <label class="inline">
          <input
            type="checkbox"
            disabled={busy}
            checked={settings.vanish}
            onChange={(e) => {
              const on = e.currentTarget.checked;
              setBusy(true);
              void act(() => client.start({ op: 'setVanish', conversation: line.id, on })).then(() => {
                setBusy(false);
                reload();
              });
            }}
          />{' '}
          Vanish mode: messages go once read and the reader leaves the chat
        </label>
      )}
    </section>
  );
}

function NewChat(props: { client: Client; act: Act; onOpen: (id: string) => void }): JSX.Element {
  const { client, act } = props;
  const [peer, setPeer] = useState('');
  const [group, setGroup] = useState('');
  const [members, setMembers] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <div class="new">
      <form
        aria-label="New chat"
        onSubmit={(e) => {
          e.preventDefault();
          setBusy(true);
          void act(() => client.start({ op: 'openDm', peer: peer.trim() })).then((id) => {
            setBusy(false);
            if (typeof id === 'string') {
              setPeer('');
              props.onOpen(id);
            }
          });
        }}
      >
        <label for="peer">Chat with (username)</label>
        <input id="peer" value={peer} onInput={(e) => setPeer(e.currentTarget.value)} required />
        <button type="submit" disabled={busy}>
          Start chat
        </button>
      </form>
      <details>
        <summary>New group</summary>
        <form
          aria-label="New group"
          onSubmit={(e) => {
            e.preventDefault();
            setBusy(true);
            void act(() => client.start({ op: 'createGroup', name: group.trim(), members: names(members) })).then(
              (id) => {
                setBusy(false);
                if (typeof id === 'string') {
                  setGroup('');
                  setMembers('');
                  props.onOpen(id);
                }
              },
            );
          }}
        >
          <label for="group-name">Group name</label>
          <input id="group-name" value={group} onInput={(e) => setGroup(e.currentTarget.value)} required />
          <label for="group-members">Members (usernames, comma separated)</label>
          <input id="group-members" value={members} onInput={(e) => setMembers(e.currentTarget.value)} />
          <button type="submit" disabled={busy}>
            Create group
          </button>
        </form>
      </details>
    </div>
  );
}

function Conversation(props: {
  client: Client;
  act: Act;
  line: ConversationLine;
  me: string;
  tick: number;
  typing: { user: string; until: number } | undefined;
  onBack: () => void;
  onGone: () => void;
}): JSX.Element {
  const { client, act, line } = props;
  const [history, setHistory] = useState<HistoryMessage[]>([]);
  const [text, setText] = useState('');
  const [replyTo, setReplyTo] = useState<HistoryMessage | null>(null);
  const [editing, setEditing] = useState<HistoryMessage | null>(null);
  const [showInfo, setShowInfo] = useState(false);
  const [showTimer, setShowTimer] = useState(false);
  const [sending, setSending] = useState(false);
  const list = useRef<HTMLOListElement>(null);
  const lastTyping = useRef(0);
  const [progress, setProgress] = useState<string | null>(null);
  useEffect(
    () =>
      client.on((m) => {
        if (m.kind === 'progress' && m.conversation === line.id) {
          setProgress(`Sending ${m.name}: ${Math.floor((100 * m.sent) / Math.max(m.total, 1))}%`);
        }
      }),
    [client, line.id],
  );
  const attach = async (file: File) => {
    setProgress(`Encrypting ${file.name}…`);
    const done = await act(async () => {
      await client.upload(line.id, file, text.trim());
      return true;
    });
    setProgress(null);
    if (done) setText('');
  };

  // The end of the conversation; earlier pages on request.
  const [limit, setLimit] = useState(PAGE);
  useEffect(() => {
    void client.history(line.id, limit).then(setHistory, () => undefined);
  }, [client, line.id, props.tick, line.last?.id, limit]);

  useEffect(() => {
    list.current?.lastElementChild?.scrollIntoView({ block: 'end' });
  }, [history.length]);

  // A countdown on disappearing messages, redrawn every second while there is one.
  const [, setNow] = useState(0);
  const counting = history.some((m) => m.expires_at !== null && m.expires_at !== undefined);
  useEffect(() => {
    if (!counting) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [counting]);

  // Read while it is open and the tab is seen.
  useEffect(() => {
    if (line.unread > 0 && !document.hidden) {
      void client.start({ op: 'markRead', conversation: line.id }).catch(() => undefined);
    }
  }, [client, line.id, line.unread]);

  // On screen: its messages are shown (after-read timers start). Left, or the tab hidden: vanish
  // mode lets what went through go.
  useEffect(() => {
    if (!document.hidden) void client.view(line.id).catch(() => undefined);
  }, [client, line.id, props.tick, history.length]);
  useEffect(() => {
    const onVisibility = () => {
      if (document.hidden) {
        void client.leave().catch(() => undefined);
      } else {
        void client.view(line.id).catch(() => undefined);
        void client.start({ op: 'markRead', conversation: line.id }).catch(() => undefined);
      }
    };
    document.addEventListener('visibilitychange', onVisibility);
    return () => {
      document.removeEventListener('visibilitychange', onVisibility);
      void client.leave().catch(() => undefined);
    };
  }, [client, line.id]);

  const send = async (e: Event) => {
    e.preventDefault();
    const body = text.trim();
    if (body === '') return;
    setSending(true);
    const done = await act(async () => {
      if (editing !== null) {
        await client.start({ op: 'act', message: editing.id, action: { kind: 'edit', text: body } });
      } else if (replyTo !== null) {
        await client.start({ op: 'act', message: replyTo.id, action: { kind: 'reply', text: body } });
      } else if (line.kind === 'dm') {
        await client.start({ op: 'sendDm', peer: line.title, text: body });
      } else {
        await client.start({ op: 'sendGroup', group: line.id, text: body });
      }
      return true;
    });
    setSending(false);
    if (done) {
      setText('');
      setReplyTo(null);
      setEditing(null);
    }
  };

  const onType = (value: string) => {
    setText(value);
    const now = Date.now();
    if (value !== '' && now - lastTyping.current > 4000) {
      lastTyping.current = now;
      void client.start({ op: 'typing', conversation: line.id }).catch(() => undefined);
    }
  };

  const byId = new Map(history.map((m) => [m.id, m]));
  const typing = props.typing !== undefined && props.typing.until > Date.now() ? props.typing.user : null;
  return (
    <section class="conversation" aria-label={`Conversation with ${line.title}`}>
      <header class="conv-head">
        <button type="button" class="back" onClick={props.onBack} aria-label="Back to conversations">
          ←
        </button>
        <h2>{line.kind === 'group' ? `# ${line.title}` : line.title}</h2>
        <button type="button" aria-expanded={showTimer} onClick={() => setShowTimer(!showTimer)}>
          Disappearing
        </button>
        {line.kind === 'group' && (
          <button type="button" aria-expanded={showInfo} onClick={() => setShowInfo(!showInfo)}>
            Group settings
          </button>
        )}
      </header>
      {showTimer && <Disappearing client={client} act={act} line={line} tick={props.tick} />}
      {line.status !== 'ok' && (
        <p class="error" role="status">
          This conversation is {line.status}: you cannot send here.
        </p>
      )}
      {showInfo && line.kind === 'group' && (
        <GroupSettings client={client} act={act} id={line.id} me={props.me} tick={props.tick} onGone={props.onGone} />
      )}
      {history.length >= limit && (
        <button type="button" class="earlier" onClick={() => setLimit(limit + PAGE)}>
          Show earlier messages
        </button>
      )}
      <ol class="messages" ref={list} aria-label="Messages" aria-live="polite" aria-relevant="additions">
        {history.map((m) =>
          m.undecryptable !== undefined ? (
            <li key={`u${m.seq ?? ''}`} class="undecryptable">
              A message from {m.sender ?? 'someone'} could not be decrypted
              {m.undecryptable === 'waiting' ? ' yet; it is tried again on the next sync.' : '.'}
            </li>
          ) : (
            <li key={m.id} class={`${m.outgoing ? 'out' : 'in'}${m.mentions_me ? ' mention' : ''}`} data-message-id={m.id}>
              <div class="meta">
                <span class="sender">{m.outgoing ? 'You' : m.sender}</span>{' '}
                <time dateTime={m.sent_at}>{time(m.sent_at)}</time>
                {m.seq === null && <span class="pending"> · sending</span>}
                {m.edits > 0 && !m.deleted && <span class="edited"> · edited</span>}
                {m.expires_at !== null && m.expires_at !== undefined && (
                  <span class="expires"> · {until(m.expires_at)}</span>
                )}
              </div>
              {m.reply_to !== null && (
                <blockquote class="quote">
                  {byId.get(m.reply_to)?.text ?? 'an earlier message'}
                </blockquote>
              )}
              <p class="text">
                {m.deleted ? <em>Message deleted</em> : m.content === 'timer' ? <em>{m.text}</em> : m.text}
              </p>
              {!m.deleted && m.attachments.map((a) => <FileView key={a.id} client={client} act={act} file={a} />)}
              {Object.keys(m.reactions).length > 0 && (
                <ul class="reactions" aria-label="Reactions">
                  {Object.entries(m.reactions).map(([emoji, who]) => (
                    <li key={emoji} title={who.join(', ')}>
                      {emoji} {who.length}
                    </li>
                  ))}
                </ul>
              )}
              {m.outgoing && m.read_by.length > 0 && <span class="receipt">Read by {m.read_by.join(', ')}</span>}
              {!m.deleted && m.content === 'message' && (
                <div class="actions">
                  <button type="button" onClick={() => { setReplyTo(m); setEditing(null); }}>
                    Reply
                  </button>
                  {REACTIONS.map(([emoji, name]) => (
                    <button
                      key={emoji}
                      type="button"
                      onClick={() =>
                        void act(() =>
                          (m.reactions[emoji] ?? []).includes(props.me)
                            ? client.start({ op: 'act', message: m.id, action: { kind: 'unreact' } })
                            : client.start({ op: 'act', message: m.id, action: { kind: 'react', emoji } }),
                        )
                      }
                      aria-label={`React with ${name}`}
                      aria-pressed={(m.reactions[emoji] ?? []).includes(props.me)}
                    >
                      {emoji}
                    </button>
                  ))}
                  {m.outgoing && (
                    <>
                      <button type="button" onClick={() => { setEditing(m); setReplyTo(null); setText(m.text ?? ''); }}>
                        Edit
                      </button>
                      <button
                        type="button"
                        onClick={() => void act(() => client.start({ op: 'act', message: m.id, action: { kind: 'unsend' } }))}
                      >
                        Unsend
                      </button>
                    </>
                  )}
                </div>
              )}
            </li>
          ),
        )}
      </ol>
      {typing !== null && (
        <p class="typing" role="status">
          {typing} is typing…
        </p>
      )}
      <form class="composer" onSubmit={(e) => void send(e)} aria-label="Send a message">
        {(replyTo !== null || editing !== null) && (
          <p class="context">
            {editing !== null ? 'Editing your message' : `Replying to ${replyTo?.sender ?? ''}`}{' '}
            <button type="button" onClick={() => { setReplyTo(null); setEditing(null); setText(''); }}>
              Cancel
            </button>
          </p>
        )}
        <label for="composer" class="visually-hidden">
          Message
        </label>
        <textarea
          id="composer"
          rows={2}
          value={text}
          disabled={line.status !== 'ok'}
          onInput={(e) => onType(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey) {
              e.preventDefault();
              e.currentTarget.form?.requestSubmit();
            }
          }}
        />
        <button type="submit" disabled={sending || line.status !== 'ok'}>
          {editing !== null ? 'Save' : 'Send'}
        </button>
        <label class="attach">
          Attach a file
          <input
            type="file"
            disabled={line.status !== 'ok' || progress !== null}
            onChange={(e) => {
              const f = e.currentTarget.files?.[0];
              e.currentTarget.value = '';
              if (f !== undefined) void attach(f);
            }}
          />
        </label>
        {progress !== null && (
          <p class="progress" role="status">
            {progress}
          </p>
        )}
      </form>
    </section>
  );
}

function size(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

const IMAGES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];

/** The reactions offered on a message (pressing yours again takes it back). */
const REACTIONS: [string, string][] = [
  ['👍', 'thumbs up'],
  ['❤️', 'heart'],
  ['😂', 'laughter'],
  ['😮', 'surprise'],
  ['😢', 'sadness'],
  ['🙏', 'thanks'],
];

/** A file in a message: its name and size; images are shown on request, other files saved. The
 *  worker fetches and decrypts; the page gets the bytes as a blob: URL (the CSP allows those for
 *  images). */
function FileView(props: { client: Client; act: Act; file: Attachment }): JSX.Element {
  const { client, act, file } = props;
  const [url, setUrl] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const image = IMAGES.includes(file.content_type);
  useEffect(() => () => {
    if (url !== null) URL.revokeObjectURL(url);
  }, [url]);
  const fetchFile = async () => {
    setBusy(true);
    const got = await act(() => client.download(file.id));
    setBusy(false);
    if (got === undefined) return;
    const u = URL.createObjectURL(new Blob([got.data], { type: got.type }));
    if (image) {
      setUrl(u);
    } else {
      const a = document.createElement('a');
      a.href = u;
      a.download = got.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(u), 60_000);
    }
  };
  return (
    <div class="file">
      <span class="file-name">{file.name}</span> <span class="file-size">({size(file.size)})</span>{' '}
      {url === null ? (
        <>
          {file.preview !== undefined && (
            <img
              src={`data:${file.preview.content_type};base64,${file.preview.data}`}
              alt={`Preview of ${file.name}`}
              class="file-preview"
            />
          )}
          <button type="button" disabled={busy} onClick={() => void fetchFile()}>
            {busy ? 'Fetching…' : image ? 'Show image' : 'Download'}
          </button>
        </>
      ) : (
        <img src={url} alt={file.name} class="file-image" />
      )}
    </div>
  );
}

function GroupSettings(props: {
  client: Client;
  act: Act;
  id: string;
  me: string;
  tick: number;
  onGone: () => void;
}): JSX.Element {
  const { client, act, id } = props;
  const [info, setInfo] = useState<GroupLine | null>(null);
  const [add, setAdd] = useState('');
  const [name, setName] = useState('');
  useEffect(() => {
    void client.group(id).then(setInfo, () => undefined);
  }, [client, id, props.tick]);
  if (info === null) return <p role="status">Loading the group…</p>;
  const admin = info.admins.includes(props.me);
  return (
    <section class="group-settings" aria-label="Group settings">
      <p>
        {info.post_quantum ? 'Post-quantum hybrid encryption' : 'Classic encryption'} · epoch {info.epoch}
      </p>
      <h3>Members</h3>
      <ul>
        {info.members.map(([user, devices]) => (
          <li key={user}>
            {user} ({devices.length} {devices.length === 1 ? 'device' : 'devices'})
            {info.admins.includes(user) && ' · admin'}
            {admin && user !== props.me && (
              <>
                {!info.admins.includes(user) && (
                  <button type="button" onClick={() => void act(() => client.start({ op: 'groupAdmin', group: id, user }))}>
                    Make {user} admin
                  </button>
                )}
                <button
                  type="button"
                  onClick={() => void act(() => client.start({ op: 'groupRemove', group: id, users: [user] }))}
                >
                  Remove {user}
                </button>
              </>
            )}
          </li>
        ))}
      </ul>
      {admin && (
        <>
          <form
            aria-label="Add members"
            onSubmit={(e) => {
              e.preventDefault();
              void act(() => client.start({ op: 'groupAdd', group: id, users: names(add) }).then(() => true)).then((done) => {
                if (done) setAdd('');
              });
            }}
          >
            <label for="group-add">Add (usernames)</label>
            <input id="group-add" value={add} onInput={(e) => setAdd(e.currentTarget.value)} required />
            <button type="submit">Add</button>
          </form>
          <form
            aria-label="Rename the group"
            onSubmit={(e) => {
              e.preventDefault();
              void act(() => client.start({ op: 'groupRename', group: id, name: name.trim() }).then(() => true)).then((done) => {
                if (done) setName('');
              });
            }}
          >
            <label for="group-rename">New name</label>
            <input id="group-rename" value={name} onInput={(e) => setName(e.currentTarget.value)} required />
            <button type="submit">Rename</button>
          </form>
        </>
      )}
      <button
        type="button"
        class="danger"
        onClick={() =>
          void act(() => client.start({ op: 'groupLeave', group: id }).then(() => true)).then((done) => {
            if (done) props.onGone();
          })
        }
      >
        Leave group
      </button>
    </section>
  );
}

/** The account's read-receipt setting: reciprocal, and followed by all its devices. */
function ReadReceipts(props: { client: Client; act: Act }): JSX.Element {
  const { client, act } = props;
  const [on, setOn] = useState<boolean | null>(null);
  useEffect(() => {
    void client.me().then((m) => setOn(m.read_receipts ?? true), () => undefined);
  }, [client]);
  if (on === null) return <></>;
  return (
    <label class="inline setting">
      <input
        type="checkbox"
        checked={on}
        onChange={(e) => {
          const want = e.currentTarget.checked;
          void act(() => client.start({ op: 'setReadReceipts', on: want }).then(() => true)).then((done) => {
            if (done) setOn(want);
          });
        }}
      />{' '}
      Send and show read receipts (on all your devices; off, you see nobody's either)
    </label>
  );
}

function Devices(props: { client: Client; act: Act; onBack: () => void }): JSX.Element {
  const { client, act } = props;
  const [devices, setDevices] = useState<DeviceLine[] | null>(null);
  const [code, setCode] = useState<string | null>(null);
  const load = useCallback(() => {
    void act(() => client.devices()).then((d) => setDevices(d ?? []));
  }, [client, act]);
  useEffect(load, [load]);
  const qr = code === null ? null : qrPath(code);
  return (
    <section class="devices" aria-label="Devices">
      <header class="conv-head">
        <button type="button" class="back" onClick={props.onBack} aria-label="Back to conversations">
          ←
        </button>
        <h2>Your devices</h2>
      </header>
      {devices === null ? (
        <p role="status">Loading devices…</p>
      ) : (
        <ul>
          {devices.map((d) => (
            <li key={d.device}>
              <code>{d.device.slice(0, 16)}</code> · since {new Date(d.created_at).toLocaleDateString()} ·{' '}
              {d.verified ? 'verified' : 'NOT verified'}
              {d.this_device ? (
                ' · this browser'
              ) : (
                <button
                  type="button"
                  class="danger"
                  onClick={() => void act(() => client.start({ op: 'revoke', device: d.device })).then(load)}
                >
                  Revoke
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
      <ReadReceipts client={client} act={act} />
      <button type="button" onClick={() => void act(() => client.start({ op: 'linkCode' })).then((c) => setCode(typeof c === 'string' ? c : null))}>
        Link a new device
      </button>
      {code !== null && qr !== null && (
        <div class="link-code">
          <p>
            On the new device, enter this code (valid 10 minutes, once):{' '}
            <code data-testid="link-code">{code}</code>
          </p>
          <svg viewBox={`0 0 ${qr.size} ${qr.size}`} role="img" aria-label="QR code of the link code" class="qr">
            <rect width={qr.size} height={qr.size} class="qr-bg" />
            <path d={qr.d} class="qr-fg" />
          </svg>
        </div>
      )}
    </section>
  );
}
