//! Upkeep (pruning, expiry, the clock, readiness) and the operator's account administration: the `OperatorStore` methods of the SQLite backend.

use super::*;

#[async_trait]
impl OperatorStore for SqliteStore {
    async fn ready(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    async fn clock(&self) -> Result<i64, StoreError> {
        // One node, one clock: this process's.
        Ok(now())
    }

    async fn prune(&self, older_than: i64) -> Result<u64, StoreError> {
        // In pieces, each its own write job, so messages keep landing in between; each piece finds
        // its rows through `log_index` or an id range, never by reading the whole log.
        let conversations: Vec<String> = self
            .read(|conn| {
                conn.prepare_cached(
                    "SELECT conversation_id FROM conversation_devices GROUP BY conversation_id",
                )
                .and_then(|mut s| {
                    s.query_map([], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)
            })
            .await?;
        let mut gone = 0u64;
        // Entries every current device of the conversation has read (the floor is read inside the
        // job: read positions only move forward, and devices that join start past the old log). A
        // job stops after PRUNE_ROWS_PER_JOB rows; the next one goes on from that conversation.
        let mut next = 0;
        while next < conversations.len() {
            let chunk = conversations[next..]
                .iter()
                .take(PRUNE_CONVERSATIONS_PER_JOB)
                .cloned()
                .collect::<Vec<_>>();
            let (n, finished) = self
                .write_keeping_hot(move |tx| {
                    let mut oldest = tx
                        .prepare_cached(
                            "SELECT seq FROM log_index WHERE conversation_id = ?1
                             AND seq <= (SELECT MIN(acked_seq) FROM conversation_devices
                                         WHERE conversation_id = ?1)
                             ORDER BY seq LIMIT ?2",
                        )
                        .map_err(backend)?;
                    let mut del = tx
                        .prepare_cached(
                            "DELETE FROM log WHERE id IN
                             (SELECT row FROM log_index WHERE conversation_id = ?1 AND seq <= ?2)",
                        )
                        .map_err(backend)?;
                    let mut unindex = tx
                        .prepare_cached(
                            "DELETE FROM log_index WHERE conversation_id = ?1 AND seq <= ?2",
                        )
                        .map_err(backend)?;
                    let (mut n, mut finished) = (0usize, 0usize);
                    for c in &chunk {
                        let budget = PRUNE_ROWS_PER_JOB - n;
                        let seqs: Vec<i64> = oldest
                            .query_map(params![c, budget as i64], |r| r.get(0))
                            .and_then(|rows| rows.collect())
                            .map_err(backend)?;
                        if let Some(last) = seqs.last() {
                            n += del.execute(params![c, last]).map_err(backend)?;
                            unindex.execute(params![c, last]).map_err(backend)?;
                        }
                        if seqs.len() == budget {
                            break; // this conversation may have more
                        }
                        finished += 1;
                    }
                    Ok((n as u64, finished))
                })
                .await?;
            gone += n;
            next += finished;
        }
        // The same for rows not indexed yet: at most one index batch of them, one pass.
        gone += self
            .write_keeping_hot(|tx| {
                tx.execute(
                    "DELETE FROM log WHERE id > (SELECT upto FROM log_indexed)
                     AND seq <= (SELECT MIN(d.acked_seq) FROM conversation_devices d
                                 WHERE d.conversation_id = log.conversation_id)",
                    [],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await?;
        // Retention. Rows are appended in time order (one writer stamps them), so the expired ones
        // are those before the first row young enough: found by reading only the expired rows
        // (a clock stepping back can keep a few rows until a later round). Rows from before
        // schema 2 carry no time (0) and are kept, as before.
        let cut: i64 = self
            .read(move |conn| {
                conn.prepare_cached("SELECT id FROM log WHERE created_at >= ?1 ORDER BY id LIMIT 1")
                    .and_then(|mut s| s.query_row(params![older_than], |r| r.get(0)).optional())
                    .map(|first_young| first_young.unwrap_or(i64::MAX))
                    .map_err(backend)
            })
            .await?;
        let mut from = 0i64;
        loop {
            let (n, last) = self
                .write_keeping_hot(move |tx| {
                    let rows: Vec<(i64, String, i64)> = tx
                        .prepare_cached(
                            "SELECT id, conversation_id, seq FROM log
                             WHERE id > ?1 AND id < ?2 AND created_at > 0 AND created_at < ?3
                             ORDER BY id LIMIT ?4",
                        )
                        .and_then(|mut s| {
                            s.query_map(
                                params![from, cut, older_than, PRUNE_ROWS_PER_JOB as i64],
                                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                            )?
                            .collect::<Result<Vec<_>, _>>()
                        })
                        .map_err(backend)?;
                    delete_log_rows(tx, &rows)?;
                    Ok((rows.len(), rows.last().map_or(from, |r| r.0)))
                })
                .await?;
            gone += n as u64;
            if n < PRUNE_ROWS_PER_JOB {
                break;
            }
            from = last;
        }
        self.write_keeping_hot(move |tx| {
            tx.execute(
                "DELETE FROM inbox WHERE welcome_id IN (SELECT id FROM welcomes WHERE created_at < ?1)",
                params![older_than],
            )
            .map_err(backend)?;
            tx.execute(
                "DELETE FROM welcomes WHERE created_at < ?1
                 OR NOT EXISTS (SELECT 1 FROM inbox i WHERE i.welcome_id = welcomes.id)",
                params![older_than],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await?;
        if gone > 0 {
            self.truncate_wal().await?;
        }
        Ok(gone)
    }

    async fn expire(&self, now: i64) -> Result<u64, StoreError> {
        let mut gone = 0u64;
        loop {
            let (looked_at, deleted) = self
                .write_keeping_hot(move |tx| {
                    let budget = PRUNE_ROWS_PER_JOB as i64;
                    // Due entries of `log_expiry`, then due rows not indexed yet (by id range).
                    let mut due: Vec<(i64, i64, bool)> = tx
                        .prepare_cached(
                            "SELECT expires_at, row FROM log_expiry WHERE expires_at <= ?1
                             ORDER BY expires_at LIMIT ?2",
                        )
                        .and_then(|mut s| {
                            s.query_map(params![now, budget], |r| Ok((r.get(0)?, r.get(1)?, true)))?
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .map_err(backend)?;
                    if (due.len() as i64) < budget {
                        let tail = tx
                            .prepare_cached(
                                "SELECT expires_at, id FROM log
                                 WHERE id > (SELECT upto FROM log_indexed)
                                 AND expires_at IS NOT NULL AND expires_at <= ?1
                                 ORDER BY id LIMIT ?2",
                            )
                            .and_then(|mut s| {
                                s.query_map(params![now, budget - due.len() as i64], |r| {
                                    Ok((r.get(0)?, r.get(1)?, false))
                                })?
                                .collect::<Result<Vec<_>, _>>()
                            })
                            .map_err(backend)?;
                        due.extend(tail);
                    }
                    let mut row_of = tx
                        .prepare_cached(
                            "SELECT conversation_id, seq FROM log WHERE id = ?1 AND expires_at = ?2",
                        )
                        .map_err(backend)?;
                    let mut unlist = tx
                        .prepare_cached("DELETE FROM log_expiry WHERE expires_at = ?1 AND row = ?2")
                        .map_err(backend)?;
                    let mut rows = Vec::with_capacity(due.len());
                    for (at, row, listed) in &due {
                        if *listed {
                            unlist.execute(params![at, row]).map_err(backend)?;
                        }
                        // An entry whose row went already (a prune by read positions) has none.
                        if let Some((c, seq)) = row_of
                            .query_row(params![row, at], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                            .map_err(backend)?
                        {
                            rows.push((*row, c, seq));
                        }
                    }
                    delete_log_rows(tx, &rows)?;
                    Ok((due.len(), rows.len()))
                })
                .await?;
            gone += deleted as u64;
            if looked_at < PRUNE_ROWS_PER_JOB {
                break;
            }
        }
        if gone > 0 {
            self.truncate_wal().await?;
        }
        Ok(gone)
    }

    async fn admin_accounts(&self) -> Result<Vec<AdminAccount>, StoreError> {
        self.read(|conn| {
            conn.prepare(
                "SELECT a.username, a.created_at, a.locked,
                        (SELECT COUNT(*) FROM devices d WHERE d.username = a.username),
                        (SELECT MAX(l.created_at) FROM log l JOIN devices d
                         ON d.device_id = l.sender_device WHERE d.username = a.username)
                 FROM accounts a ORDER BY a.username",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(AdminAccount {
                        username: r.get(0)?,
                        created_at: r.get(1)?,
                        locked: r.get(2)?,
                        devices: as_u64(r.get(3)?),
                        last_active: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
        })
        .await
    }

    async fn set_locked(&self, username: &str, locked: bool) -> Result<bool, StoreError> {
        let username = username.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE accounts SET locked = ?2 WHERE username = ?1",
                params![username, locked],
            )
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn delete_account(&self, username: &str) -> Result<Option<DeletedAccount>, StoreError> {
        let username = username.to_owned();
        self.write(move |tx| {
            let exists: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM accounts WHERE username = ?1",
                    params![username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if exists == 0 {
                return Ok(None);
            }
            let column = |sql: &str| -> Result<Vec<String>, StoreError> {
                tx.prepare(sql)
                    .and_then(|mut s| {
                        s.query_map(params![username], |r| r.get(0))?
                            .collect::<Result<Vec<String>, _>>()
                    })
                    .map_err(backend)
            };
            let devices = column("SELECT device_id FROM devices WHERE username = ?1 ORDER BY device_id")?;
            let conversations = column(
                "SELECT conversation_id FROM conversation_members WHERE username = ?1 ORDER BY conversation_id",
            )?;
            // Its leaves, as for a leave: members' next sync removes its devices from the group.
            tx.execute(
                "INSERT OR IGNORE INTO departed (conversation_id, username)
                 SELECT DISTINCT conversation_id, username FROM conversation_devices WHERE username = ?1
                   AND conversation_id IN (SELECT conversation_id FROM conversation_members WHERE username = ?1)",
                params![username],
            )
            .map_err(backend)?;
            for sql in [
                "DELETE FROM conversation_members WHERE username = ?1",
                "DELETE FROM key_packages WHERE device_id IN (SELECT device_id FROM devices WHERE username = ?1)",
                "DELETE FROM inbox WHERE device_id IN (SELECT device_id FROM devices WHERE username = ?1)",
                "DELETE FROM links WHERE username = ?1",
                "DELETE FROM revoked_devices WHERE username = ?1",
                "DELETE FROM devices WHERE username = ?1",
                "DELETE FROM accounts WHERE username = ?1",
            ] {
                tx.execute(sql, params![username]).map_err(backend)?;
            }
            tx.execute(
                "INSERT INTO deleted_accounts (username, deleted_at) VALUES (?1, ?2)",
                params![username, now()],
            )
            .map_err(backend)?;
            Ok(Some(DeletedAccount {
                devices,
                conversations,
            }))
        })
        .await
    }
}
