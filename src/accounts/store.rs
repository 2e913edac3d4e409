//! The directory on disk: `DATA/accounts.redb`, one JSON record per user, team,
//! namespace, robot and token. A change is stored as the records that differ between
//! the directory before and after it, in one transaction.

use super::model::{Directory, Settings};
use crate::store::StoreError;
use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const TEAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("teams");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const ROBOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("robots");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
const SETTINGS_KEY: &str = "settings";
/// The directory is read once, at start; the cache only serves writes.
const CACHE_BYTES: usize = 1 << 20;

pub struct AccountStore {
    db: Database,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(io) => StoreError::io("accounts database", io),
        other => StoreError::Meta(format!("accounts database: {other}")),
    }
}

fn corrupt(table: &str, key: &str, e: serde_json::Error) -> StoreError {
    StoreError::Meta(format!(
        "accounts database: corrupt {table} record {key:?}: {e}"
    ))
}

fn load_table<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<BTreeMap<String, T>, StoreError> {
    let table = txn.open_table(def).map_err(db_err)?;
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(db_err)? {
        let (key, value) = row.map_err(db_err)?;
        let record = serde_json::from_slice(value.value())
            .map_err(|e| corrupt(def.name(), key.value(), e))?;
        out.insert(key.value().to_string(), record);
    }
    Ok(out)
}

/// Puts what is new or changed in `after`, removes what `after` lacks.
fn store_diff<T: Serialize + PartialEq>(
    txn: &redb::WriteTransaction,
    def: TableDefinition<&str, &[u8]>,
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(def).map_err(db_err)?;
    for (key, record) in after {
        if before.get(key) != Some(record) {
            let bytes = serde_json::to_vec(record).map_err(|e| corrupt(def.name(), key, e))?;
            table
                .insert(key.as_str(), bytes.as_slice())
                .map_err(db_err)?;
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        table.remove(key.as_str()).map_err(db_err)?;
    }
    Ok(())
}

impl AccountStore {
    /// Opens (creating if needed) the database; another process holding it is
    /// [`StoreError::InUse`].
    pub fn open(path: &Path) -> Result<AccountStore, StoreError> {
        let db = crate::store::open_database(path, CACHE_BYTES)?;
        let txn = db.begin_write().map_err(db_err)?;
        for def in [USERS, TEAMS, NAMESPACES, ROBOTS, TOKENS, SETTINGS] {
            txn.open_table(def).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(AccountStore { db })
    }

    /// The whole directory; `defaults` until an admin changes a setting.
    pub fn load(&self, defaults: Settings, mirrors: Vec<String>) -> Result<Directory, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let settings = txn
            .open_table(SETTINGS)
            .map_err(db_err)?
            .get(SETTINGS_KEY)
            .map_err(db_err)?
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()
            .map_err(|e| corrupt("settings", SETTINGS_KEY, e))?
            .unwrap_or(defaults);
        Ok(Directory {
            users: load_table(&txn, USERS)?,
            teams: load_table(&txn, TEAMS)?,
            namespaces: load_table(&txn, NAMESPACES)?,
            robots: load_table(&txn, ROBOTS)?,
            tokens: load_table(&txn, TOKENS)?,
            settings,
            mirrors,
        })
    }

    /// Stores the change from `before` to `after` in one transaction (fsynced).
    pub fn save(&self, before: &Directory, after: &Directory) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        store_diff(&txn, USERS, &before.users, &after.users)?;
        store_diff(&txn, TEAMS, &before.teams, &after.teams)?;
        store_diff(&txn, NAMESPACES, &before.namespaces, &after.namespaces)?;
        store_diff(&txn, ROBOTS, &before.robots, &after.robots)?;
        store_diff(&txn, TOKENS, &before.tokens, &after.tokens)?;
        if before.settings != after.settings {
            let bytes = serde_json::to_vec(&after.settings)
                .map_err(|e| corrupt("settings", SETTINGS_KEY, e))?;
            txn.open_table(SETTINGS)
                .map_err(db_err)?
                .insert(SETTINGS_KEY, bytes.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{sample, settings};
    use super::super::model::Visibility;
    use super::*;

    #[test]
    fn changes_survive_a_reopen_and_only_differences_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.redb");
        let store = AccountStore::open(&path).unwrap();
        let empty = store.load(settings(), vec!["docker.io".into()]).unwrap();
        let mut after = sample();
        store.save(&empty, &after).unwrap();
        let before = after.clone();
        after.remove_team("web").unwrap();
        after.set_visibility(None, Visibility::Public).unwrap();
        store.save(&before, &after).unwrap();
        drop(store);
        let reopened = AccountStore::open(&path)
            .unwrap()
            .load(settings(), vec!["docker.io".into()])
            .unwrap();
        assert_eq!(reopened, after);
        assert!(!reopened.namespaces.contains_key("web"));
        assert_eq!(reopened.settings.global_visibility, Visibility::Public);
    }

    #[test]
    fn a_second_opener_is_told_the_database_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.redb");
        let _held = AccountStore::open(&path).unwrap();
        assert!(matches!(
            AccountStore::open(&path),
            Err(StoreError::InUse(_))
        ));
    }
}
