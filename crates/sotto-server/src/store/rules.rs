//! The storage rules both backends keep, written once. Each backend reads the rows a rule needs
//! (inside its own transaction, with its own locks), asks the rule, and writes what it says: the
//! backends hold SQL and transactions, not rules. The conformance suite
//! (`tests/store_conformance.rs`) checks that both keep them.

use super::StoreError;

/// Whether `caller` may revoke `device`, given every device of the caller's account: the caller
/// must still be one of them (a revoked caller is gone), the device must be one of them, and it
/// must not be the last.
pub(crate) fn check_revoke(
    account_devices: &[String],
    device: &str,
    caller: &str,
) -> Result<(), StoreError> {
    if !account_devices.iter().any(|d| d == caller) {
        return Err(StoreError::CallerGone);
    }
    if !account_devices.iter().any(|d| d == device) {
        return Err(StoreError::NotFound("device"));
    }
    if account_devices.len() == 1 {
        return Err(StoreError::LastDevice);
    }
    Ok(())
}

/// Whether `leaver` may leave a group whose admins are `admins` and whose members after it left
/// would be `remaining`: the last admin cannot leave while others remain.
pub(crate) fn check_last_admin(
    leaver: &str,
    admins: &[String],
    remaining: &[String],
) -> Result<(), StoreError> {
    let leaver_is_admin = admins.iter().any(|a| a == leaver);
    let an_admin_remains = remaining.iter().any(|m| admins.contains(m));
    if leaver_is_admin && !remaining.is_empty() && !an_admin_remains {
        return Err(StoreError::LastAdmin);
    }
    Ok(())
}

/// The devices a key-package claim takes one package from: the account's devices (in the order
/// they were registered), only those in `only` when it names any, never the claimer's own.
pub(crate) fn claim_targets(
    account_devices: Vec<String>,
    only: &[String],
    claimer: &str,
) -> Vec<String> {
    account_devices
        .into_iter()
        .filter(|d| d != claimer && (only.is_empty() || only.contains(d)))
        .collect()
}

/// The unique key of the DM between two accounts, and the pair in key order. `migrate` copies
/// keys as they are: changing this format needs a migration of every stored DM.
pub(crate) fn dm_key<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str, String) {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (lo, hi, format!("{lo}\n{hi}"))
}

/// A group's member accounts and departed accounts after a commit. `members` are the devices in
/// the new tree with their accounts; `welcomed` the devices the commit added (a group's commit);
/// `departed_before` the accounts that had left but still had devices in the tree. An account
/// added again is no longer departed; a departed account whose devices are all out of the tree is
/// forgotten; everyone else in the tree is a member. Both lists sorted.
pub(crate) fn group_after_commit(
    members: &[(String, String)],
    welcomed: &[String],
    departed_before: &[String],
) -> (Vec<String>, Vec<String>) {
    let mut accounts: Vec<String> = members.iter().map(|(_, u)| u.clone()).collect();
    accounts.sort();
    accounts.dedup();
    let added: Vec<&String> = members
        .iter()
        .filter(|(d, _)| welcomed.contains(d))
        .map(|(_, u)| u)
        .collect();
    let mut departed: Vec<String> = departed_before
        .iter()
        .filter(|u| !added.contains(u) && accounts.contains(u))
        .cloned()
        .collect();
    departed.sort();
    departed.dedup();
    let current = accounts
        .into_iter()
        .filter(|u| !departed.contains(u))
        .collect();
    (current, departed)
}

/// Whom to wake for a conversation (`$1`): its member accounts' devices in the MLS tree as last
/// committed. Before the first commit there are none: then [`WAKE_BEFORE_FIRST_COMMIT`].
pub(crate) const WAKE_TREE_DEVICES: &str = "SELECT d.device_id FROM conversation_devices d
     JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
     WHERE d.conversation_id = $1";

/// Whom to wake for a conversation with no tree yet (`$1`): every device of its member accounts.
pub(crate) const WAKE_BEFORE_FIRST_COMMIT: &str =
    "SELECT v.device_id FROM devices v JOIN conversation_members m ON m.username = v.username
     WHERE m.conversation_id = $1";

/// A device's stored token hash, which is exactly 32 bytes; anything else is a damaged row.
pub(crate) fn token_hash(stored: &[u8]) -> Result<[u8; 32], StoreError> {
    stored
        .try_into()
        .map_err(|_| StoreError::Backend("a stored token hash is not 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn revoking_needs_a_current_caller_a_device_of_the_account_and_another_device() {
        let devices = s(&["a1", "a2"]);
        assert!(check_revoke(&devices, "a2", "a1").is_ok());
        assert!(
            check_revoke(&devices, "a1", "a1").is_ok(),
            "itself, with another left"
        );
        assert!(matches!(
            check_revoke(&devices, "a2", "b1"),
            Err(StoreError::CallerGone)
        ));
        assert!(matches!(
            check_revoke(&devices, "b1", "a1"),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            check_revoke(&s(&["a1"]), "a1", "a1"),
            Err(StoreError::LastDevice)
        ));
        // The caller check comes first: a revoked device learns nothing about the account.
        assert!(matches!(
            check_revoke(&s(&["a1"]), "zz", "b1"),
            Err(StoreError::CallerGone)
        ));
    }

    #[test]
    fn the_last_admin_stays_while_others_remain() {
        let admins = s(&["alice"]);
        assert!(matches!(
            check_last_admin("alice", &admins, &s(&["bob"])),
            Err(StoreError::LastAdmin)
        ));
        assert!(
            check_last_admin("alice", &admins, &[]).is_ok(),
            "the last one out"
        );
        assert!(check_last_admin("bob", &admins, &s(&["alice"])).is_ok());
        assert!(check_last_admin("alice", &s(&["alice", "bob"]), &s(&["bob"])).is_ok());
    }

    #[test]
    fn claims_skip_the_claimer_and_keep_to_the_named_devices() {
        let devices = s(&["b1", "b2", "b3"]);
        assert_eq!(claim_targets(devices.clone(), &[], "b2"), s(&["b1", "b3"]));
        assert_eq!(
            claim_targets(devices.clone(), &s(&["b3", "zz"]), "a1"),
            s(&["b3"])
        );
        assert!(claim_targets(devices, &s(&["b2"]), "b2").is_empty());
    }

    #[test]
    fn a_dm_key_is_the_ordered_pair_on_two_lines() {
        assert_eq!(
            dm_key("bob", "alice"),
            ("alice", "bob", "alice\nbob".to_owned())
        );
        assert_eq!(dm_key("alice", "bob").2, dm_key("bob", "alice").2);
    }

    #[test]
    fn departed_accounts_stay_while_their_devices_do_and_rejoin_when_added() {
        let tree = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(d, u)| (d.to_string(), u.to_string()))
                .collect()
        };
        let members = tree(&[("a1", "alice"), ("b1", "bob"), ("c1", "carol")]);
        // carol left; her device is still in the tree.
        assert_eq!(
            group_after_commit(&members, &[], &s(&["carol"])),
            (s(&["alice", "bob"]), s(&["carol"]))
        );
        // Her device is removed: she is forgotten.
        assert_eq!(
            group_after_commit(&members[..2], &[], &s(&["carol"])),
            (s(&["alice", "bob"]), vec![])
        );
        // She is added back (a device of hers welcomed): a member again.
        assert_eq!(
            group_after_commit(&members, &s(&["c1"]), &s(&["carol"])),
            (s(&["alice", "bob", "carol"]), vec![])
        );
    }

    #[test]
    fn a_token_hash_of_another_length_is_a_damaged_row() {
        assert_eq!(token_hash(&[7; 32]).unwrap(), [7; 32]);
        assert!(matches!(token_hash(&[7; 31]), Err(StoreError::Backend(_))));
    }
}
