//! `sotto`: the Sotto command-line client.
//!
//! Every conversation is end-to-end encrypted; this binary is a thin shell over `sotto-client`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sotto_client::{
    Action, Client, ClientError, HistoryItem, ListenEvent, Message, SyncEvent, Update,
};

/// Sotto: end-to-end-encrypted messaging.
#[derive(Debug, Parser)]
#[command(name = "sotto", version)]
struct Cli {
    /// This device's data directory (default: $SOTTO_HOME, else the platform data dir).
    #[arg(long, global = true, env = "SOTTO_HOME")]
    home: Option<PathBuf>,
    /// Server URL, e.g. http://127.0.0.1:7420 (stored at register/link; overrides it otherwise).
    #[arg(long, global = true, env = "SOTTO_SERVER")]
    server: Option<String>,
    /// PEM file of the private certificate authority that signed the server's certificate (trusted
    /// instead of the system's roots; remembered at register/link).
    #[arg(long, global = true, env = "SOTTO_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow plain http:// to a server other than this machine: messages stay end-to-end
    /// encrypted, but the device token and who talks to whom would cross the network in the clear.
    #[arg(long, global = true, env = "SOTTO_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account with this as its first device.
    Register {
        /// The username (3-32 of a-z 0-9 _ - .).
        username: String,
    },
    /// Manage this account's devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Register this device under an existing account with a link code.
    Link {
        /// The code printed by `sotto device add` on another device.
        code: String,
    },
    /// List this account's devices.
    Devices,
    /// Send a message: `send USERNAME TEXT` (a DM, created on first use) or
    /// `send --group GROUP TEXT`.
    Send {
        /// Send to this group (id, or its name if unique) instead of a user.
        #[arg(long)]
        group: Option<String>,
        /// Send this file (encrypted on this device; TEXT, if given, is its caption). An upload
        /// cut off part way resumes when the same command runs again.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// The file's media type (default: guessed from its content and name).
        #[arg(long = "type", value_name = "TYPE", requires = "file")]
        content_type: Option<String>,
        /// Print the sent message as JSON (and no progress bar).
        #[arg(long)]
        json: bool,
        /// USERNAME TEXT, or TEXT with --group (TEXT is optional with --file).
        #[arg(num_args = 0..=2, value_names = ["USERNAME", "TEXT"])]
        args: Vec<String>,
    },
    /// Download a message's file: `download ID [--out PATH]`. A download cut off part way
    /// resumes; nothing is written to PATH unless the whole file verified.
    Download {
        /// The message carrying the file (as `sync --json` or `history --json` print it).
        id: String,
        /// Where to write it (a directory, or a file path; default: the file's name here). An
        /// existing file is never overwritten.
        #[arg(long, value_name = "PATH")]
        out: Option<std::path::PathBuf>,
        /// Print the result as JSON (and no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Reply to a message: `reply ID TEXT` (ID as `send`, `sync --json` or `history --json`
    /// print it).
    Reply {
        /// The message replied to.
        id: String,
        /// The text.
        text: String,
    },
    /// React to a message with an emoji (replacing your earlier reaction), or remove your
    /// reaction: `react ID EMOJI`, `react --remove ID`.
    React {
        /// Remove your reaction instead.
        #[arg(long)]
        remove: bool,
        /// The message.
        id: String,
        /// The emoji (one).
        #[arg(required_unless_present = "remove", conflicts_with = "remove")]
        emoji: Option<String>,
    },
    /// Edit a message you sent (within 24 hours, at most 10 times).
    Edit {
        /// The message (its first version's id).
        id: String,
        /// The new text.
        text: String,
    },
    /// Delete a message you sent for everyone (within 24 hours); every device removes its text.
    Unsend {
        /// The message.
        id: String,
    },
    /// Send one typing indicator: `typing USERNAME` or `typing --group GROUP` (only devices
    /// connected now see it; nothing is stored).
    Typing {
        /// A group (id, or its name if unique) instead of a user.
        #[arg(long)]
        group: Option<String>,
        /// The other account of a DM.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        username: Option<String>,
    },
    /// Mark everything received in a conversation as read and send read receipts (if on):
    /// `read USERNAME` or `read --group GROUP`.
    Read {
        /// A group (id, or its name if unique) instead of a user.
        #[arg(long)]
        group: Option<String>,
        /// The other account of a DM.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        username: Option<String>,
    },
    /// Set a conversation's disappearing timer for every member: `timer USERNAME 1h`,
    /// `timer --group GROUP 30m --after-read`, `timer USERNAME off`. Any duration from 30 s to
    /// 4 weeks; the usual ones: 30s, 5m, 1h, 8h, 1d, 1w, 4w. In a group only admins may.
    Timer {
        /// A group (id, or its name if unique) instead of a user.
        #[arg(long)]
        group: Option<String>,
        /// The other account of a DM, then the duration; or with --group, only the duration.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
        /// Start each message's clock when a device shows it (the sender's copies count from
        /// sending); without it, from sending.
        #[arg(long)]
        after_read: bool,
    },
    /// Vanish mode in a DM: `vanish USERNAME on|off`. A message goes from every device once it
    /// was read and the reader left (for this command line: the end of the command that
    /// showed it).
    Vanish {
        /// The other account.
        username: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        value: String,
    },
    /// This device's settings.
    Settings {
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Groups: create, change membership and metadata, list.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Fetch and apply everything pending; print new messages.
    Sync {
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
    },
    /// Print a conversation's history as this device holds it, in log order (messages that could
    /// not be decrypted in their places): `history USERNAME` or `history --group GROUP`.
    History {
        /// A group (id, or its name if unique) instead of a user.
        #[arg(long)]
        group: Option<String>,
        /// The other account of a DM.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        username: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stay connected and print messages as they arrive.
    Listen {
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group with these members (all their devices); you are its admin. Prints the group
    /// id as the last line.
    Create {
        /// The group's name.
        name: String,
        /// Member usernames.
        usernames: Vec<String>,
        /// Use the hybrid post-quantum ciphersuite up to this many member devices, classic above.
        #[arg(long, env = "SOTTO_PQ_GROUP_LIMIT", default_value_t = sotto_client::DEFAULT_PQ_GROUP_LIMIT)]
        pq_group_limit: usize,
    },
    /// Add members (admins only).
    Add {
        /// Group id (or unique name).
        group: String,
        /// Usernames.
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// Remove members (admins only).
    Remove {
        /// Group id (or unique name).
        group: String,
        /// Usernames.
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// Group id (or unique name).
        group: String,
    },
    /// Rename a group (admins only).
    Rename {
        /// Group id (or unique name).
        group: String,
        /// The new name.
        name: String,
    },
    /// Make a member an admin (admins only).
    Admin {
        /// Group id (or unique name).
        group: String,
        /// The member to make an admin.
        username: String,
    },
    /// One line per group: id, name, member count (tab-separated).
    List,
    /// A group's name, admins, members and their devices.
    Info {
        /// Group id (or unique name).
        group: String,
    },
}

#[derive(Debug, Subcommand)]
enum SettingsCommand {
    /// Read receipts: `on` (the default) or `off`. Reciprocal: off, you neither send nor see them.
    ReadReceipts {
        /// `on` or `off`; omitted, print the current value.
        #[arg(value_parser = ["on", "off"])]
        value: Option<String>,
    },
    /// The disappearing timer new conversations start with, for the whole account: a duration
    /// (`1d`) or `off`; omitted, print it.
    DefaultTimer {
        /// A duration or `off`.
        value: Option<String>,
    },
}

/// A duration argument, or `off` (`None`).
fn timer_arg(s: &str) -> Result<Option<u32>, ClientError> {
    if s == "off" {
        return Ok(None);
    }
    sotto_client::sotto_engine::expiry::parse_duration(s)
        .map(Some)
        .ok_or_else(|| {
            ClientError::Invalid(format!(
                "not a duration: {s} (say 30s, 5m, 1h, 2d, 1w, or off)"
            ))
        })
}

fn timer_line(secs: Option<u32>) -> String {
    match secs {
        Some(s) => format!(
            "timer {}",
            sotto_client::sotto_engine::expiry::format_duration(s)
        ),
        None => "timer off".into(),
    }
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Create a one-time link code (valid 10 minutes) for a new device; printed as the last line.
    Add,
    /// Revoke a device of this account (lost or stolen): the server stops serving it at once and
    /// this device removes it from every conversation, so it can read nothing sent afterwards.
    Revoke {
        /// The device id, as `sotto devices` lists it.
        device: String,
    },
}

fn default_home() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("sotto"))
        .unwrap_or_else(|| PathBuf::from(".sotto"))
}

/// A progress bar on stderr for transfers of more than a few MB, hidden when stderr is not a
/// terminal or the output is JSON.
struct Bar {
    quiet: bool,
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
}

/// Transfers smaller than this show no bar.
const BAR_FROM: u64 = 4 * 1024 * 1024;

impl Bar {
    fn new(json: bool, what: &'static str) -> Self {
        use std::io::IsTerminal as _;
        Self {
            quiet: json || !std::io::stderr().is_terminal(),
            what,
            bar: None,
        }
    }

    fn update(&mut self, p: sotto_client::Progress) {
        if self.quiet || p.total < BAR_FROM {
            return;
        }
        let what = self.what;
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(p.total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(if p.resumed_from > 0 {
                format!("{what} (resumed)")
            } else {
                what.to_owned()
            });
            b
        });
        bar.set_position(p.done);
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A file's line in text output: ` [file NAME, SIZE, TYPE]`.
fn file_note(files: &[sotto_client::AttachmentView]) -> String {
    files
        .iter()
        .map(|a| {
            format!(
                " [file {}, {} bytes, {}{}]",
                a.name,
                a.size,
                a.content_type,
                if a.downloaded { ", downloaded" } else { "" }
            )
        })
        .collect()
}

fn print_messages(msgs: &[Message], json: bool) {
    let mut out = std::io::stdout().lock();
    for m in msgs {
        let line = if json {
            serde_json::to_string(m).unwrap_or_default()
        } else if let Some(g) = &m.group {
            format!(
                "[{}] {} (group {}): {}{}",
                m.sent_at,
                m.sender,
                g,
                m.text,
                file_note(&m.attachments)
            )
        } else {
            format!(
                "[{}] {}: {}{}",
                m.sent_at,
                m.sender,
                m.text,
                file_note(&m.attachments)
            )
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn print_updates(updates: &[Update], json: bool) {
    let mut out = std::io::stdout().lock();
    for u in updates {
        let line = if json {
            serde_json::to_string(u).unwrap_or_default()
        } else {
            match u {
                Update::Reaction {
                    message,
                    user,
                    emoji: Some(e),
                    sent_at,
                    ..
                } => format!("[{sent_at}] {user} reacted {e} to {message}"),
                Update::Reaction {
                    message,
                    user,
                    emoji: None,
                    sent_at,
                    ..
                } => format!("[{sent_at}] {user} removed their reaction to {message}"),
                Update::Edit {
                    message,
                    user,
                    text,
                    sent_at,
                    ..
                } => format!("[{sent_at}] {user} edited {message}: {text}"),
                Update::Unsend {
                    message,
                    user,
                    sent_at,
                    ..
                } => format!("[{sent_at}] {user} unsent {message}"),
                Update::Typing {
                    user, group: None, ..
                } => format!("{user} is typing"),
                Update::Typing {
                    user,
                    group: Some(g),
                    ..
                } => format!("{user} is typing (group {g})"),
                Update::Receipt {
                    message,
                    user,
                    status,
                    ..
                } => format!("{user}: {status} {message}"),
                Update::Expired { id, .. } => format!("{id} expired"),
            }
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn print_events(events: &[SyncEvent], json: bool) {
    let mut out = std::io::stdout().lock();
    for e in events {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
        } else if let SyncEvent::Recovered {
            conversation, seq, ..
        } = e
        {
            // (A give-up is also a warning.)
            eprintln!("conversation {conversation}: message {seq} could be decrypted after all");
        }
    }
    let _ = out.flush();
}

fn print_history(items: &[HistoryItem], json: bool) {
    let mut out = std::io::stdout().lock();
    for item in items {
        let line = match item {
            _ if json => serde_json::to_string(item).unwrap_or_default(),
            HistoryItem::Message { message: m, .. } => {
                let mut line = format!("[{}] {}: ", m.sent_at, m.sender);
                match (&m.text, m.attachments.is_empty()) {
                    (Some(t), _) => line.push_str(t),
                    (None, false) => {}
                    (None, true) => line.push_str("[unsent]"),
                }
                line.push_str(&file_note(&m.attachments));
                if m.edits > 0 && !m.deleted {
                    line.push_str(" (edited)");
                }
                for (emoji, users) in &m.reactions {
                    line.push_str(&format!(" [{emoji} {}]", users.join(", ")));
                }
                if let Some(r) = &m.reply_to {
                    line.push_str(&format!(" (reply to {r})"));
                }
                line
            }
            HistoryItem::Undecryptable {
                seq,
                undecryptable,
                sender,
                sender_device,
                ..
            } => {
                let who = sender.as_deref().unwrap_or(sender_device);
                if *undecryptable == "failed" {
                    format!("[entry {seq}] {who}: message could not be decrypted (given up)")
                } else {
                    format!("[entry {seq}] {who}: message could not be decrypted yet")
                }
            }
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn warn(lines: &[String]) {
    for w in lines {
        eprintln!("warning: {w}");
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let home = cli.home.unwrap_or_else(default_home);
    let options = sotto_client::ConnectOptions {
        ca_cert: cli.ca_cert,
        insecure: cli.insecure,
    };
    let client = Client::open_with(&home, cli.server.as_deref(), &options)?;
    match cli.command {
        Command::Register { username } => {
            client.account().register(&username).await?;
            println!(
                "registered {username}, device {}",
                client.device_id().unwrap_or_default()
            );
        }
        Command::Device {
            command: DeviceCommand::Revoke { device },
        } => {
            let this = client.device_id().unwrap_or_default() == device.trim().to_ascii_lowercase();
            let report = client.devices().revoke(&device).await?;
            warn(&report.warnings);
            if this {
                println!("revoked this device ({device}); its data directory can be deleted");
            } else {
                println!("revoked device {device} and removed it from your conversations");
            }
        }
        Command::Device {
            command: DeviceCommand::Add,
        } => {
            let code = client.account().create_link_code().await?;
            eprintln!("On the new device run `sotto link CODE` within 10 minutes. Keep the code secret: it grants access to your account.");
            println!("{code}");
        }
        Command::Link { code } => {
            client.account().link(&code).await?;
            println!(
                "linked device {} to {}",
                client.device_id().unwrap_or_default(),
                client.username().unwrap_or_default()
            );
        }
        Command::Devices => {
            for d in client.devices().list().await? {
                println!(
                    "{} {} {}{}",
                    d.device_id,
                    d.created_at,
                    if d.verified { "verified" } else { "UNVERIFIED" },
                    if d.this_device { " (this device)" } else { "" }
                );
            }
        }
        Command::Send {
            group,
            file: Some(path),
            content_type,
            json,
            args,
        } => {
            let usage = || {
                ClientError::Invalid(
                    "usage: sotto send USERNAME --file PATH [TEXT], or sotto send --group GROUP --file PATH [TEXT]"
                        .into(),
                )
            };
            let (to, caption) = match (&group, args.as_slice()) {
                (Some(_), []) => (None, None),
                (Some(_), [text]) => (None, Some(text.clone())),
                (None, [user]) => (Some(user.clone()), None),
                (None, [user, text]) => (Some(user.clone()), Some(text.clone())),
                _ => return Err(usage()),
            };
            let file = sotto_client::FileToSend {
                path,
                caption,
                content_type,
                name: None,
            };
            let mut bar = Bar::new(json, "uploading");
            let mut progress = |p: sotto_client::Progress| bar.update(p);
            let sent = match (&group, &to) {
                (Some(g), _) => client.group(g).send_file(&file, &mut progress).await,
                (None, Some(u)) => client.dm(u).send_file(&file, &mut progress).await,
                (None, None) => return Err(usage()),
            };
            bar.finish();
            let (msg, report) = sent?;
            warn(&report.warnings);
            if json {
                println!("{}", serde_json::to_string(&msg).unwrap_or_default());
            } else {
                println!("sent {}", msg.id);
            }
        }
        Command::Send {
            group, args, json, ..
        } => {
            let (msg, report) = match (group, args.as_slice()) {
                (Some(g), [text]) => client.group(&g).send(text).await?,
                (None, [username, text]) => client.dm(username).send(text).await?,
                (Some(_), _) => {
                    return Err(ClientError::Invalid(
                        "usage: sotto send --group GROUP TEXT".into(),
                    ))
                }
                (None, _) => {
                    return Err(ClientError::Invalid(
                        "usage: sotto send USERNAME TEXT".into(),
                    ))
                }
            };
            warn(&report.warnings);
            if json {
                println!("{}", serde_json::to_string(&msg).unwrap_or_default());
            } else {
                println!("sent {}", msg.id);
            }
        }
        Command::Download { id, out, json } => {
            let mut bar = Bar::new(json, "downloading");
            let mut progress = |p: sotto_client::Progress| bar.update(p);
            let got = client.download(&id, out.as_deref(), &mut progress).await;
            bar.finish();
            let path = got?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "path": path.to_string_lossy()})
                );
            } else {
                println!("saved {}", path.display());
            }
        }
        Command::Group { command } => group(&client, command).await?,
        Command::Sync { json } => {
            let report = client.sync().await?;
            warn(&report.warnings);
            print_events(&report.events, json);
            // Print, then mark shown: killed in between, the next run prints them again
            // rather than never.
            let msgs = client.unshown()?;
            print_messages(&msgs, json);
            client.mark_shown(&msgs)?;
            print_updates(&client.take_updates()?, json);
        }
        Command::Reply { id, text } => act(&client, &id, Action::Reply(text), "sent").await?,
        Command::React {
            remove: true, id, ..
        } => act(&client, &id, Action::Unreact, "removed reaction").await?,
        Command::React { id, emoji, .. } => {
            let emoji = emoji.unwrap_or_default();
            act(&client, &id, Action::React(emoji), "reacted").await?
        }
        Command::Edit { id, text } => act(&client, &id, Action::Edit(text), "edited").await?,
        Command::Unsend { id } => act(&client, &id, Action::Unsend, "unsent").await?,
        Command::Read { group, username } => {
            let (n, report) = match (group, username) {
                (Some(g), _) => client.group(&g).mark_read().await?,
                (None, Some(u)) => client.dm(&u).mark_read().await?,
                (None, None) => {
                    return Err(ClientError::Invalid(
                        "usage: sotto read USERNAME, or sotto read --group GROUP".into(),
                    ))
                }
            };
            warn(&report.warnings);
            println!("read {n}");
        }
        Command::Settings {
            command: SettingsCommand::ReadReceipts { value },
        } => {
            if let Some(v) = value {
                let report = client.set_read_receipts(v == "on").await?;
                warn(&report.warnings);
            }
            let on = client.read_receipts()?;
            println!("read-receipts {}", if on { "on" } else { "off" });
        }
        Command::Timer {
            group,
            args,
            after_read,
        } => {
            use sotto_client::sotto_engine::expiry::TimerMode;
            let mode = if after_read {
                TimerMode::AfterRead
            } else {
                TimerMode::AfterSend
            };
            let (report, secs) = match (group, args.as_slice()) {
                (Some(g), [d]) => {
                    let secs = timer_arg(d)?;
                    let t = secs.map(|s| (s, mode));
                    (client.group(&g).set_timer(t).await?, secs)
                }
                (None, [u, d]) => {
                    let secs = timer_arg(d)?;
                    let t = secs.map(|s| (s, mode));
                    (client.dm(u).set_timer(t).await?, secs)
                }
                _ => {
                    return Err(ClientError::Invalid(
                        "usage: sotto timer USERNAME DURATION|off, or sotto timer --group GROUP DURATION|off"
                            .into(),
                    ))
                }
            };
            warn(&report.warnings);
            let suffix = if after_read && secs.is_some() {
                " after reading"
            } else {
                ""
            };
            println!("{}{suffix}", timer_line(secs));
        }
        Command::Vanish { username, value } => {
            let report = client.dm(&username).set_vanish(value == "on").await?;
            warn(&report.warnings);
            println!("vanish {value}");
        }
        Command::Settings {
            command: SettingsCommand::DefaultTimer { value },
        } => {
            if let Some(v) = value {
                let report = client.set_default_timer(timer_arg(&v)?).await?;
                warn(&report.warnings);
            }
            println!("default-{}", timer_line(client.default_timer()?));
        }
        Command::Typing { group, username } => {
            match (group, username) {
                (Some(g), _) => client.group(&g).typing().await?,
                (None, Some(u)) => client.dm(&u).typing().await?,
                (None, None) => {
                    return Err(ClientError::Invalid(
                        "usage: sotto typing USERNAME, or sotto typing --group GROUP".into(),
                    ))
                }
            }
            println!("typing");
        }
        Command::History {
            group,
            username,
            json,
        } => {
            let items = match (group, username) {
                (Some(g), _) => {
                    let id = client.group(&g).info()?.id;
                    client.engine().history_items(&id)?
                }
                (None, Some(u)) => client.engine().dm_history_items(&u)?,
                (None, None) => {
                    return Err(ClientError::Invalid(
                        "usage: sotto history USERNAME, or sotto history --group GROUP".into(),
                    ))
                }
            };
            print_history(&items, json);
        }
        Command::Listen { json } => {
            let listen = client.listen(|ev| match ev {
                ListenEvent::Connected => eprintln!("connected"),
                ListenEvent::Messages(m) => print_messages(&m, json),
                ListenEvent::Warning(w) => warn(&[w]),
                ListenEvent::Events(e) => print_events(&e, json),
                ListenEvent::Updates(u) => print_updates(&u, json),
                ListenEvent::Disconnected(why) => eprintln!("disconnected: {why}; reconnecting"),
            });
            // Ctrl-C, or SIGTERM (a service manager, `kill`): the user leaves, and the purge
            // below runs before the process ends.
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                r = listen => r?,
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        }
    }
    // The user leaves what this command showed: vanish-mode messages that went through go now.
    if client.username().is_some() {
        if let Err(e) = client.purge_expired(true) {
            warn(&[e.to_string()]);
        }
    }
    Ok(())
}

/// Acts on a message and prints `WHAT ID` (the id of the message sent for it).
async fn act(client: &Client, id: &str, action: Action, what: &str) -> Result<(), ClientError> {
    let (sent, report) = client.act(id, action).await?;
    warn(&report.warnings);
    println!("{what} {sent}");
    Ok(())
}

async fn group(client: &Client, command: GroupCommand) -> Result<(), ClientError> {
    match command {
        GroupCommand::Create {
            name,
            usernames,
            pq_group_limit,
        } => {
            let (id, report) = client
                .groups()
                .create(&name, &usernames, pq_group_limit)
                .await?;
            warn(&report.warnings);
            eprintln!("created group {name}");
            println!("{id}");
        }
        GroupCommand::Add { group, usernames } => {
            warn(&client.group(&group).add(&usernames).await?.warnings);
            println!("added {}", usernames.join(", "));
        }
        GroupCommand::Remove { group, usernames } => {
            warn(&client.group(&group).remove(&usernames).await?.warnings);
            println!("removed {}", usernames.join(", "));
        }
        GroupCommand::Leave { group } => {
            client.group(&group).leave().await?;
            println!("left {group}");
        }
        GroupCommand::Rename { group, name } => {
            warn(&client.group(&group).rename(&name).await?.warnings);
            println!("renamed to {name}");
        }
        GroupCommand::Admin { group, username } => {
            warn(&client.group(&group).make_admin(&username).await?.warnings);
            println!("{username} is now an admin");
        }
        GroupCommand::List => {
            warn(&client.sync().await?.warnings);
            for g in client.groups().list()? {
                println!("{}\t{}\t{}", g.id, g.name, g.members.len());
            }
        }
        GroupCommand::Info { group } => {
            warn(&client.sync().await?.warnings);
            let g = client.group(&group).info()?;
            println!("id: {}", g.id);
            println!("name: {}", g.name);
            println!("admins: {}", g.admins.join(", "));
            println!(
                "encryption: MLS, {}",
                if g.post_quantum {
                    "hybrid post-quantum (ML-KEM-768 + X25519)"
                } else {
                    "classic (X25519)"
                }
            );
            println!("members:");
            for (user, devices) in &g.members {
                println!("  {user}: {}", devices.join(", "));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
