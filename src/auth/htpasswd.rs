//! htpasswd files: bcrypt (what `portcullis htpasswd` writes), plus the `{SHA}` and
//! apr1 (Apache MD5) formats that nginx users already have, accepted with a warning
//! because both are fast hashes that offline guessing breaks easily.
//!
//! apr1 is written here (on the `md-5` crate) because no well-kept crate provides it.

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// bcrypt cost `portcullis htpasswd add` uses unless told otherwise.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    Bcrypt(String),
    Sha1([u8; 20]),
    Apr1 { salt: String, hash: String },
}

impl PasswordHash {
    pub fn parse(field: &str) -> Option<PasswordHash> {
        if field.starts_with("$2y$") || field.starts_with("$2b$") || field.starts_with("$2a$") {
            return Some(PasswordHash::Bcrypt(field.to_string()));
        }
        if let Some(b64) = field.strip_prefix("{SHA}") {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            return Some(PasswordHash::Sha1(bytes.try_into().ok()?));
        }
        let rest = field.strip_prefix("$apr1$")?;
        let (salt, hash) = rest.split_once('$')?;
        (salt.len() <= 8 && hash.len() == 22).then(|| PasswordHash::Apr1 {
            salt: salt.to_string(),
            hash: hash.to_string(),
        })
    }

    /// Checks a password. Slow for bcrypt by design: call it off the async threads.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Sha1(expected) => {
                let actual: [u8; 20] = Sha1::digest(password.as_bytes()).into();
                constant_time_eq(&actual, expected)
            }
            PasswordHash::Apr1 { salt, hash } => constant_time_eq(
                apr1(password.as_bytes(), salt.as_bytes()).as_bytes(),
                hash.as_bytes(),
            ),
        }
    }

    /// The bcrypt cost of a bcrypt hash, so a decoy check costs the same.
    pub fn bcrypt_cost(&self) -> Option<u32> {
        match self {
            PasswordHash::Bcrypt(h) => h.get(4..6)?.parse().ok(),
            _ => None,
        }
    }

    fn weak_format(&self) -> Option<&'static str> {
        match self {
            PasswordHash::Bcrypt(_) => None,
            PasswordHash::Sha1(_) => Some("{SHA}"),
            PasswordHash::Apr1 { .. } => Some("apr1 (MD5)"),
        }
    }
}

/// Compares secrets without an early exit, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt variant (`$apr1$salt$hash`); returns the 22-character hash part.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let alt = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(MAGIC)
        .chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alt[..chunk.len()]);
    }
    let mut n = password.len();
    while n > 0 {
        ctx.update(if n & 1 == 1 {
            &[0u8][..]
        } else {
            &password[..1]
        });
        n >>= 1;
    }
    let mut sum = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password)
        } else {
            c.update(sum)
        }
        if round % 3 != 0 {
            c.update(salt)
        }
        if round % 7 != 0 {
            c.update(password)
        }
        if round & 1 == 1 {
            c.update(sum)
        } else {
            c.update(password)
        }
        sum = c.finalize();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(sum[i]);
    for (x, y, z) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((b(x) << 16) | (b(y) << 8) | b(z), 4);
    }
    put(b(11), 2);
    out
}

/// The users of an htpasswd file, and what was wrong with the lines it skipped.
#[derive(Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, PasswordHash>,
    pub warnings: Vec<String>,
}

impl Htpasswd {
    pub fn parse(text: &str, origin: &str) -> Htpasswd {
        let mut parsed = Htpasswd::default();
        let mut weak = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, field)) = line.split_once(':') else {
                parsed.warnings.push(format!(
                    "{origin}:{}: no ':' between user and hash; line ignored",
                    n + 1
                ));
                continue;
            };
            match PasswordHash::parse(field) {
                Some(hash) => {
                    if let Some(format) = hash.weak_format() {
                        weak.push(format!("{user} ({format})"));
                    }
                    parsed.users.insert(user.to_string(), hash);
                }
                None => parsed.warnings.push(format!(
                    "{origin}:{}: user {user:?} has a hash format this server does not accept (use bcrypt: `portcullis htpasswd add {origin} {user}`); line ignored",
                    n + 1
                )),
            }
        }
        if !weak.is_empty() {
            parsed.warnings.push(format!(
                "{origin}: {} use fast hashes that are easy to crack; re-add them with `portcullis htpasswd add` to store bcrypt",
                weak.join(", ")
            ));
        }
        parsed
    }

    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    pub fn users(&self) -> impl Iterator<Item = (&str, &PasswordHash)> {
        self.users.iter().map(|(name, hash)| (name.as_str(), hash))
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The highest bcrypt cost in the file, for decoy checks of unknown users.
    pub fn max_bcrypt_cost(&self) -> Option<u32> {
        self.users
            .values()
            .filter_map(PasswordHash::bcrypt_cost)
            .max()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("user name {0:?} must be non-empty and contain no ':' or whitespace")]
    BadUser(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bcrypt: {0}")]
    Hash(#[from] bcrypt::BcryptError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EditError + '_ {
    move |source| EditError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, EditError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces the file atomically (temp file, fsync, rename). A new file is readable by
/// its owner only; a file that exists keeps its mode, owner and group, so a server
/// running as another user (the systemd unit's `portcullis`) can still read it after
/// root edits it.
fn write_lines(path: &Path, lines: &[String]) -> Result<(), EditError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let existing = std::fs::metadata(path).ok();
    let mode = existing.as_ref().map_or(0o600, |m| m.mode() & 0o7777);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(mode);
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    for line in lines {
        writeln!(file, "{line}").map_err(io_err(&tmp))?;
    }
    // The umask may have narrowed the mode given at creation.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp))?;
    if let Some(m) = &existing {
        // Only root may give a file away; others keep the owner they have.
        let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
    }
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn entry_user(line: &str) -> Option<&str> {
    line.split_once(':').map(|(u, _)| u)
}

/// Adds `user` or replaces their password, stored as bcrypt (`$2y$`, as Apache writes it).
pub fn add_user(path: &Path, user: &str, password: &str, cost: u32) -> Result<bool, EditError> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        return Err(EditError::BadUser(user.to_string()));
    }
    let hash = bcrypt::hash_with_result(password, cost)?.format_for_version(bcrypt::Version::TwoY);
    let mut lines = read_lines(path)?;
    let entry = format!("{user}:{hash}");
    let replaced = match lines.iter_mut().find(|l| entry_user(l) == Some(user)) {
        Some(line) => {
            *line = entry;
            true
        }
        None => {
            lines.push(entry);
            false
        }
    };
    write_lines(path, &lines)?;
    Ok(replaced)
}

/// Removes `user`; `false` if they were not there.
pub fn remove_user(path: &Path, user: &str) -> Result<bool, EditError> {
    let mut lines = read_lines(path)?;
    let before = lines.len();
    lines.retain(|l| entry_user(l) != Some(user));
    if lines.len() == before {
        return Ok(false);
    }
    write_lines(path, &lines)?;
    Ok(true)
}

pub fn list_users(path: &Path) -> Result<Vec<String>, EditError> {
    let lines = read_lines(path)?;
    Ok(lines
        .iter()
        .filter_map(|l| entry_user(l))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `htpasswd -nbm`, `htpasswd -nbs`, `htpasswd -nbB -C 5` and `openssl passwd -apr1`.
    const FILE: &str = "alice:$apr1$/Sd/LmeM$Ni7LQ2yLgo1h7G0R7jenk0\n\
        bob:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\n\
        carol:$2y$05$GOaEx8FHjFiFOK.tHsQQmeh1H3xQfvsTNlGjltunQHgWKu/fUyL4u\n\
        # a comment\n\
        dave:plaintext\n\
        broken line\n";

    #[test]
    fn verifies_every_accepted_format() {
        let file = Htpasswd::parse(FILE, "h");
        assert_eq!(file.user_count(), 3);
        assert!(file.get("alice").unwrap().verify("s3cret"));
        assert!(!file.get("alice").unwrap().verify("s3cret!"));
        assert!(file.get("bob").unwrap().verify("hunter2"));
        assert!(!file.get("bob").unwrap().verify("hunter3"));
        assert!(file.get("carol").unwrap().verify("pässword"));
        assert!(!file.get("carol").unwrap().verify("password"));
        assert!(file.get("dave").is_none());
        assert_eq!(file.max_bcrypt_cost(), Some(5));
    }

    #[test]
    fn warns_about_weak_and_unusable_lines() {
        let file = Htpasswd::parse(FILE, "h");
        let all = file.warnings.join("\n");
        assert!(all.contains("h:5: user \"dave\""), "{all}");
        assert!(all.contains("h:6: no ':'"), "{all}");
        assert!(
            all.contains("alice (apr1 (MD5))") && all.contains("bob ({SHA})"),
            "{all}"
        );
    }

    #[test]
    fn apr1_matches_openssl_with_long_password() {
        let long = "a much longer password than sixteen bytes";
        assert_eq!(apr1(long.as_bytes(), b"abcdefgh"), "Eqv4oIyMsS.tjfvQCJYY1/");
    }

    #[test]
    fn edits_keep_other_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        assert!(!add_user(&path, "u1", "p1", 4).unwrap());
        assert!(!add_user(&path, "u2", "p2", 4).unwrap());
        assert!(add_user(&path, "u1", "new", 4).unwrap());
        assert_eq!(list_users(&path).unwrap(), ["u1", "u2"]);
        let file = Htpasswd::parse(&std::fs::read_to_string(&path).unwrap(), "h");
        assert!(file.get("u1").unwrap().verify("new"));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("u2:$2y$04$"));
        assert!(remove_user(&path, "u1").unwrap());
        assert!(!remove_user(&path, "u1").unwrap());
        assert_eq!(list_users(&path).unwrap(), ["u2"]);
        assert!(matches!(
            add_user(&path, "a:b", "p", 4),
            Err(EditError::BadUser(_))
        ));
    }

    #[test]
    fn edits_keep_the_mode_of_an_existing_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        add_user(&path, "u1", "p1", 4).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "a new file is its owner's only");
        // Shared with the service's group, as an operator would.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        add_user(&path, "u2", "p2", 4).unwrap();
        assert_eq!(mode(&path), 0o640);
        remove_user(&path, "u1").unwrap();
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
