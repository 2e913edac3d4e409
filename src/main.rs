//! The `portcullis` command: parses the command line, loads the configuration and
//! starts the server or runs a maintenance command. The modules live in `lib.rs`.

use clap::{Parser, Subcommand};
use pingora::listeners::tls::Acceptor;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use portcullis::accounts::{self, Accounts};
use portcullis::activity::{self, ActivityError, ActivityLog, Filter};
use portcullis::api::token::TokenAuth;
use portcullis::api::Api;
use portcullis::auth::policy::Policy;
use portcullis::auth::{self, Authenticator};
use portcullis::certs;
use portcullis::config::{self, Config, Overrides};
use portcullis::edge::tls::CertStore;
use portcullis::edge::{self, ConnectionLimiter, HttpApp, Listener, Protocol, Reloader};
use portcullis::gc::{Collector, Maintenance, Report, RunOptions};
use portcullis::mirror::Mirror;
use portcullis::notify::Notifier;
use portcullis::ops::{Drain, Ops};
use portcullis::store::{FsBlobStore, RedbMetaStore, Registry, StoreError};
use portcullis::transfer;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Container-registry gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry (plain HTTP on 127.0.0.1:5000 from ./data unless told otherwise).
    Serve {
        /// TOML configuration file (see conf/portcullis.toml); PORTCULLIS_SECTION__KEY variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (plain HTTP), IP:PORT; replaces server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Directory for blobs and metadata; overrides storage.data_dir.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        mirror: MirrorArgs,
        /// Serve /metrics, /healthz and /readyz on this address, IP:PORT; replaces metrics.listen.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
        /// Log lines as "text" (readable) or "json" (one object per line); replaces log.format.
        #[arg(long, value_name = "FORMAT", value_parser = clap::value_parser!(config::LogFormat))]
        log_format: Option<config::LogFormat>,
        /// Take over the listening sockets of the running server on the same data
        /// directory, then send it SIGQUIT: a zero-downtime upgrade.
        #[arg(long)]
        upgrade: bool,
    },
    /// Ask a server's metrics listener whether it is alive (exit 0) or not (exit 1), for
    /// container HEALTHCHECKs and probes.
    Health {
        /// The URL to ask; /readyz also checks the store (metrics.listen).
        #[arg(long, default_value = "http://127.0.0.1:5001/healthz")]
        url: String,
    },
    /// Validate a configuration (and the certificates and htpasswd file it names) without serving.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a local CA and a server certificate with DNS and IP SANs.
    Certs {
        /// Directory for ca.crt/ca.key and server.crt/server.key (an existing CA there is reused).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// DNS name of the server (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// IP address of the server (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Also issue a client certificate with this name, for mTLS (client.crt/client.key).
        #[arg(long)]
        client: Option<String>,
    },
    /// Pull images into the pull-through cache (for a machine about to go offline).
    /// Uses the store directly: stop a server on the same data directory first.
    Fetch {
        /// Images, e.g. docker.io/library/alpine:3.20 or ghcr.io/org/app@sha256:...
        #[arg(required = true)]
        images: Vec<String>,
        /// Platform to take from a multi-platform image, os/arch[/variant]
        /// (repeatable; default: this machine's).
        #[arg(long = "platform", conflicts_with = "all_platforms")]
        platforms: Vec<String>,
        /// Take every platform of a multi-platform image.
        #[arg(long)]
        all_platforms: bool,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        mirror: MirrorArgs,
    },
    /// Collect garbage: delete what no tag (or, by default, manifest) needs, apply
    /// retention rules and the cache's byte cap, expire abandoned uploads.
    /// Against a stopped store (--data), or a running server (--server).
    Gc {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory of a stopped server; overrides storage.data_dir.
        #[arg(long, conflicts_with = "server")]
        data: Option<PathBuf>,
        /// Ask a running server to collect instead, e.g. https://registry.lan (an
        /// admin.users login: --user, and the password in PORTCULLIS_PASSWORD).
        #[arg(long)]
        server: Option<String>,
        #[arg(long, requires = "server")]
        user: Option<String>,
        /// List what would go and the bytes it frees, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete manifests no tag names (and what only they reference); gc.delete_untagged.
        #[arg(long)]
        delete_untagged: bool,
        /// Keep content made or read more recently than this (e.g. 30m, 2h); gc.grace_secs.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Check a stopped store: blob contents, links, tags, manifests and what they
    /// reference, referrers, cached tags, leftovers. Exits 0 when it is consistent, 1 when
    /// problems remain.
    Fsck {
        /// The data directory of the store (stop the server on it first).
        #[arg(long)]
        data: PathBuf,
        /// Fix what can be fixed without guessing (corrupt blobs go to DATA/lost+found/).
        #[arg(long)]
        repair: bool,
    },
    /// Write repositories to an OCI image layout (a directory, or a tar when PATH ends
    /// in .tar) to carry to another registry. Uses the store directly: stop a server on
    /// the same data directory first.
    Export {
        /// Where to write: a new directory, or a file ending in .tar.
        #[arg(long)]
        out: PathBuf,
        /// Repositories to export (default: all).
        repos: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Import an OCI image layout (directory or .tar), or a registry:2 storage tree
    /// with --from-distribution. Uses the store directly: stop a server first.
    Import {
        /// The OCI image layout: a directory or a .tar of one.
        #[arg(
            required_unless_present = "from_distribution",
            conflicts_with = "from_distribution"
        )]
        path: Option<PathBuf>,
        /// A registry:2 (CNCF distribution) filesystem storage directory (its
        /// rootdirectory, or the docker/registry/v2 directory in it).
        #[arg(long, value_name = "DIR")]
        from_distribution: Option<PathBuf>,
        /// Repository for layout images whose ref names name none (as skopeo writes them).
        #[arg(long, value_name = "NAME", conflicts_with = "from_distribution")]
        repository: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Manage an htpasswd file (bcrypt).
    Htpasswd {
        #[command(subcommand)]
        action: HtpasswdAction,
    },
    /// Manage accounts ([accounts] enabled) in the data directory of a stopped server;
    /// while it runs, use the web UI or the REST API instead.
    User {
        /// TOML configuration file (for storage.data_dir and the accounts settings).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Data directory; overrides storage.data_dir.
        #[arg(long, global = true)]
        data: Option<PathBuf>,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Read the activity log: who pushed, pulled, deleted or mounted what, and who
    /// changed an account or signed in.
    Activity {
        #[command(subcommand)]
        action: ActivityAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user (with a private personal namespace of the same name).
    Add {
        name: String,
        /// May manage every namespace, user and setting.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user, their tokens, memberships and personal namespace.
    Remove { name: String },
    /// List the users.
    List,
    /// Copy the users of an htpasswd file (bcrypt entries) into the accounts.
    Import { htpasswd: PathBuf },
}

#[derive(Subcommand)]
enum ActivityAction {
    /// Write the log to standard output as JSON lines, oldest first. Uses the database
    /// directly: a running server holds it (ask it for GET /api/v1/activity?format=jsonl).
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory of a stopped server; overrides storage.data_dir.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Entries from this time on: 2026-11-01T00:00:00Z, or a date (UTC).
        #[arg(long, value_name = "TIME", value_parser = activity::parse_time)]
        since: Option<u64>,
        /// Entries before this time.
        #[arg(long, value_name = "TIME", value_parser = activity::parse_time)]
        until: Option<u64>,
        /// Only this user's (or robot's) entries.
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
        /// Only repositories (or account objects, such as team:web) starting with this.
        #[arg(long, value_name = "PREFIX")]
        repository: Option<String>,
        /// Only this action: push, pull, delete, mount, login, user.create, ...
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
    },
}

/// Pull-through cache switches, for `serve` and `fetch`.
#[derive(clap::Args)]
struct MirrorArgs {
    /// Mirror an upstream registry: NAME (docker.io, ghcr.io, quay.io...) or NAME=URL.
    /// Repeatable; the first serves repository names without a registry prefix, so
    /// `--mirror docker.io` makes a Docker Hub mirror. Adds to [[upstream]] in the config.
    #[arg(long = "mirror", value_name = "NAME[=URL]")]
    mirrors: Vec<String>,
    /// Never contact an upstream; serve only what the cache holds (mirror.offline).
    #[arg(long)]
    offline: bool,
}

#[derive(Subcommand)]
enum HtpasswdAction {
    /// Add a user or change their password (prompted, or read from stdin with --password-stdin).
    Add {
        file: PathBuf,
        user: String,
        /// bcrypt cost (4-31); each step doubles the time a login check takes.
        #[arg(long, default_value_t = auth::htpasswd::DEFAULT_BCRYPT_COST)]
        cost: u32,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Remove { file: PathBuf, user: String },
    /// List the users.
    List { file: PathBuf },
}

/// glibc gives threads that allocate their own malloc arenas, up to 8 per core; with
/// pingora's workers and the blocking pool that makes resident memory climb in steps
/// that are never returned. Two arenas keep it flat under load at no measurable cost.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // The server logs as configured; other commands log as text.
    if !matches!(cli.command, Command::Serve { .. }) {
        portcullis::logging::init(&config::LogConfig::default());
    }
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            data,
            mirror,
            metrics_listen,
            log_format,
            upgrade,
        } => load_config(
            config.as_deref(),
            Overrides {
                listen,
                data_dir: data,
                mirrors: mirror.mirrors,
                offline: mirror.offline,
                metrics_listen,
                log_format,
            },
        )
        .and_then(|config| {
            portcullis::logging::init_server(&config.log);
            let served = serve(config, upgrade);
            portcullis::logging::flush_server();
            served
        }),
        // Unhealthy is exit 1 (as fsck's problems), usage errors 2.
        Command::Health { url } => health(&url).or_else(|message| {
            eprintln!("portcullis: {message}");
            std::process::exit(1)
        }),
        Command::Check { config } => check(&config),
        Command::Certs {
            out,
            names,
            ips,
            client,
        } => certs::generate(&certs::CertRequest {
            out,
            names,
            ips,
            client,
        })
        .map(|text| print!("{text}")),
        Command::Htpasswd { action } => htpasswd(action),
        Command::User {
            config,
            data,
            action,
        } => load_config(
            config.as_deref(),
            Overrides {
                data_dir: data,
                ..Overrides::default()
            },
        )
        .and_then(|config| user(&config, action)),
        Command::Gc {
            config,
            data,
            server,
            user,
            dry_run,
            delete_untagged,
            grace,
        } => {
            let options = RunOptions {
                dry_run,
                delete_untagged: delete_untagged.then_some(true),
                grace,
                show_progress: true,
            };
            match server {
                Some(url) => gc_remote(&url, user.as_deref(), &options),
                None => store_config(config, data).and_then(|config| gc_local(&config, &options)),
            }
        }
        Command::Fsck { data, repair } => match fsck(&data, repair) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Fetch {
            images,
            platforms,
            all_platforms,
            config,
            data,
            mirror,
        } => load_config(
            config.as_deref(),
            Overrides {
                data_dir: data,
                mirrors: mirror.mirrors,
                offline: mirror.offline,
                ..Overrides::default()
            },
        )
        .and_then(|config| fetch(&config, &images, &platforms, all_platforms)),
        Command::Export {
            out,
            repos,
            config,
            data,
        } => store_config(config, data).and_then(|config| export(&config, &repos, &out)),
        Command::Import {
            path,
            from_distribution,
            repository,
            config,
            data,
        } => store_config(config, data).and_then(|config| match (path, from_distribution) {
            (_, Some(tree)) => import_distribution(&config, &tree),
            (Some(path), None) => import_layout(&config, &path, repository.as_deref()),
            (None, None) => Err("give a layout PATH or --from-distribution DIR".into()),
        }),
        Command::Activity {
            action:
                ActivityAction::Export {
                    config,
                    data,
                    since,
                    until,
                    actor,
                    repository,
                    action,
                },
        } => store_config(config, data).and_then(|config| {
            let filter = Filter {
                actor,
                target_prefix: repository,
                action,
                since,
                until,
                text: None,
            };
            export_activity(&config, &filter)
        }),
    };
    if let Err(message) = result {
        eprintln!("portcullis: {message}");
        std::process::exit(2);
    }
}

fn load_config(path: Option<&Path>, overrides: Overrides) -> Result<Config, String> {
    config::load(path, std::env::vars(), overrides).map_err(|e| e.to_string())
}

/// The parts that read files named by the config: built the same way by `check` and `serve`.
struct Loaded {
    auth: Arc<Authenticator>,
    certs: Option<Arc<CertStore>>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn load_files(config: &Config) -> Result<Loaded, String> {
    let auth = Arc::new(Authenticator::new(&config.auth)?);
    let (certs, tls) = match &config.tls {
        Some(tls) => {
            let certs = Arc::new(CertStore::load(&tls.certificates)?);
            let server = edge::tls::server_config(tls, certs.clone())?;
            (Some(certs), Some(server))
        }
        None => (None, None),
    };
    Ok(Loaded { auth, certs, tls })
}

fn check(path: &Path) -> Result<(), String> {
    let config = load_config(Some(path), Overrides::default())?;
    load_files(&config)?;
    println!(
        "{}: ok ({} plain and {} TLS listeners, authentication {}, data in {})",
        path.display(),
        config.listen.len(),
        config.tls_listen.len(),
        if config.auth.htpasswd.is_some() {
            "on"
        } else {
            "off"
        },
        config.data_dir.display()
    );
    Ok(())
}

fn htpasswd(action: HtpasswdAction) -> Result<(), String> {
    use auth::htpasswd::{add_user, list_users, remove_user};
    match action {
        HtpasswdAction::Add {
            file,
            user,
            cost,
            password_stdin,
        } => {
            if !(4..=31).contains(&cost) {
                return Err(format!(
                    "--cost {cost}: bcrypt cost must be between 4 and 31 (10-12 is usual)"
                ));
            }
            let password = read_password(&user, password_stdin)?;
            let replaced = add_user(&file, &user, &password, cost).map_err(|e| e.to_string())?;
            println!(
                "{} {user} in {}",
                if replaced { "updated" } else { "added" },
                file.display()
            );
            println!("send SIGHUP to a running portcullis to load the change");
        }
        HtpasswdAction::Remove { file, user } => {
            if !remove_user(&file, &user).map_err(|e| e.to_string())? {
                return Err(format!("{}: no user {user:?}", file.display()));
            }
            println!("removed {user} from {}", file.display());
        }
        HtpasswdAction::List { file } => {
            for user in list_users(&file).map_err(|e| e.to_string())? {
                println!("{user}");
            }
        }
    }
    Ok(())
}

/// A new password: the first line of stdin, or typed twice at a prompt.
fn read_password(user: &str, from_stdin: bool) -> Result<String, String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password(format!("Password for {user}: "))
            .map_err(|e| format!("no terminal to prompt on ({e}); use --password-stdin"))?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ; nothing changed".into());
        }
        first
    };
    if password.is_empty() {
        return Err("empty password; nothing changed".into());
    }
    Ok(password)
}

fn user(config: &Config, action: UserAction) -> Result<(), String> {
    if !config.accounts.enabled {
        tracing::warn!(
            "accounts.enabled is not set: the server will not use these accounts until it is"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create {} ({e})", config.data_dir.display()))?;
    let accounts = match open_accounts_at(config) {
        Err(e) if e.contains("open in another process") => {
            return Err(format!(
                "{e}: a server is running on {}; stop it, or manage accounts in its web UI (/ui/) or REST API (/api/v1/)",
                config.data_dir.display()
            ))
        }
        other => other?,
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let done = |e: accounts::AccountError| e.to_string();
    runtime.block_on(async {
        match action {
            UserAction::Add {
                name,
                admin,
                password_stdin,
            } => {
                let password = read_password(&name, password_stdin)?;
                accounts.add_user(&name, &password, admin).await.map_err(done)?;
                println!("added {name}{}", if admin { " (admin)" } else { "" });
            }
            UserAction::Passwd {
                name,
                password_stdin,
            } => {
                let password = read_password(&name, password_stdin)?;
                accounts.set_password(&name, &password).await.map_err(done)?;
                println!("changed the password of {name}");
            }
            UserAction::Remove { name } => {
                accounts.change(|d| d.remove_user(&name)).await.map_err(done)?;
                println!("removed {name}");
            }
            UserAction::List => {
                for user in accounts.directory().users.values() {
                    println!("{}{}", user.name, if user.admin { " (admin)" } else { "" });
                }
            }
            UserAction::Import { htpasswd } => {
                let text = std::fs::read_to_string(&htpasswd)
                    .map_err(|e| format!("{}: cannot read ({e})", htpasswd.display()))?;
                let file = auth::htpasswd::Htpasswd::parse(&text, &htpasswd.display().to_string());
                let (mut added, mut skipped) = (0, 0);
                for (name, hash) in file.users() {
                    let auth::htpasswd::PasswordHash::Bcrypt(hash) = hash else {
                        eprintln!("{name}: not a bcrypt entry; skipped (set a password with `portcullis user add {name}`)");
                        skipped += 1;
                        continue;
                    };
                    let now = accounts::now_ms();
                    match accounts.change(|d| d.add_user(name, hash.clone(), false, now)).await {
                        Ok(()) => added += 1,
                        Err(e) => {
                            eprintln!("{name}: {e}; skipped");
                            skipped += 1;
                        }
                    }
                }
                println!("imported {added} users from {} ({skipped} skipped)", htpasswd.display());
            }
        }
        Ok(())
    })
}

/// Opens (creating if needed) the store in the configured data directory.
fn open_registry(config: &Config) -> Result<Arc<Registry>, String> {
    open_registry_within(config, Duration::ZERO)
}

/// [`open_registry`], waiting up to `wait` for another process to let go of the
/// metadata database (an upgrade: the old server still drains).
/// With `[accounts]`: the directory, in `DATA/accounts.redb` (opened after the
/// metadata store, whose lock says no other server runs here).
fn open_accounts(config: &Config) -> Result<Option<Arc<Accounts>>, String> {
    if !config.accounts.enabled {
        return Ok(None);
    }
    let accounts = open_accounts_at(config).map_err(|e| {
        format!(
            "{e}; stop the server that uses {}",
            config.data_dir.display()
        )
    })?;
    if accounts.directory().users.values().all(|u| !u.admin) {
        tracing::warn!(
            "no admin account yet: stop the server and run `portcullis user add NAME --admin --data {}`",
            config.data_dir.display()
        );
    }
    Ok(Some(Arc::new(accounts)))
}

fn open_accounts_at(config: &Config) -> Result<Accounts, String> {
    let defaults = accounts::Settings {
        global_visibility: config.accounts.global_visibility,
        mirror_visibility: Default::default(),
    };
    let mirrors = config
        .mirror
        .upstreams
        .iter()
        .map(|u| u.name.clone())
        .collect();
    Accounts::open(
        &config.data_dir,
        defaults,
        mirrors,
        config.accounts.bcrypt_cost,
    )
    .map_err(|e| e.to_string())
}

fn open_registry_within(config: &Config, wait: Duration) -> Result<Arc<Registry>, String> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).map_err(|e| {
        format!(
            "cannot create data directory {} ({e}); choose another with --data",
            data.display()
        )
    })?;
    // The metadata first: its lock proves no other process uses the store, before
    // the blob store clears the leftovers of unfinished writes.
    let meta = open_when_free(
        wait,
        data,
        || RedbMetaStore::open(&data.join("meta.redb")),
        |e| matches!(e, StoreError::InUse(_)),
    )?;
    let blobs = FsBlobStore::open(data).map_err(|e| e.to_string())?;
    Ok(Arc::new(Registry::new(
        Arc::new(blobs),
        Arc::new(meta),
        config.min_free_bytes,
    )))
}

/// Opens a database of the data directory, waiting up to `wait` while another process
/// holds it (an upgrade: the old server lets go when it exits).
fn open_when_free<T, E: std::fmt::Display>(
    wait: Duration,
    data: &Path,
    open: impl Fn() -> Result<T, E>,
    in_use: impl Fn(&E) -> bool,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match open() {
            Err(e) if in_use(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(db) => return Ok(db),
            Err(e) => {
                return Err(format!(
                    "{e}; is a server using {}? stop the server first, or use another --data",
                    data.display()
                ))
            }
        }
    }
}

fn fetch(
    config: &Config,
    images: &[String],
    platforms: &[String],
    all_platforms: bool,
) -> Result<(), String> {
    use portcullis::mirror::prefill::{self, Platform, Platforms};
    let platforms = if all_platforms {
        Platforms::All
    } else if platforms.is_empty() {
        Platforms::Only(vec![Platform::host()])
    } else {
        Platforms::Only(
            platforms
                .iter()
                .map(|p| Platform::parse(p))
                .collect::<Result<_, _>>()?,
        )
    };
    if config.mirror.upstreams.is_empty() {
        return Err(
            "no upstream to fetch from; add --mirror docker.io (or [[upstream]] in --config)"
                .into(),
        );
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let registry = open_registry(config)?;
        let mirror = Mirror::new(registry, &config.mirror, config.limits.max_manifest_bytes)?;
        let mut out = std::io::stderr();
        for image in images {
            eprintln!("{image}");
            let started = std::time::Instant::now();
            let s = prefill::fetch_image(&mirror, image, &platforms, &mut out).await?;
            eprintln!(
                "{image}: {} manifests, {} blobs ({} already cached), {:.1} MiB fetched in {:.1} s",
                s.manifests,
                s.blobs,
                s.already_cached,
                s.bytes_fetched as f64 / f64::from(1 << 20),
                started.elapsed().as_secs_f64()
            );
        }
        for upstream in &config.mirror.upstreams {
            if let Some(left) = mirror
                .upstream(&upstream.name)
                .and_then(|u| u.rate_limit_remaining())
            {
                eprintln!(
                    "{}: pulls left in the rate-limit window: {left}",
                    upstream.name
                );
            }
        }
        Ok(())
    })
}

/// Prints a report: every item on a dry run, then the summary.
fn print_report(report: &Report) {
    if report.dry_run {
        for tag in &report.untagged {
            println!("would untag {tag}");
        }
        for manifest in &report.manifests {
            println!("would delete manifest {manifest}");
        }
        for blob in &report.blobs {
            println!("would delete blob {blob}");
        }
    }
    println!("{}", report.summary());
}

fn gc_local(config: &Config, options: &RunOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let report = runtime.block_on(async {
        Collector::new(open_registry(config)?, config)
            .run(options)
            .await
            .map_err(|e| format!("garbage collection failed: {e}"))
    })?;
    print_report(&report);
    Ok(())
}

fn gc_remote(server: &str, user: Option<&str>, options: &RunOptions) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut url = reqwest::Url::parse(server)
        .and_then(|base| base.join("/admin/gc"))
        .map_err(|e| {
            format!("--server {server:?}: {e}; give a URL such as https://registry.lan")
        })?;
    url.query_pairs_mut()
        .append_pair("dry_run", &options.dry_run.to_string());
    if options.delete_untagged == Some(true) {
        url.query_pairs_mut().append_pair("delete_untagged", "true");
    }
    if let Some(grace) = options.grace {
        url.query_pairs_mut()
            .append_pair("grace", &format!("{}s", grace.as_secs()));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = client.post(url.clone());
        if let Some(user) = user {
            let password = std::env::var("PORTCULLIS_PASSWORD").map_err(|_| {
                "--user needs the password in the PORTCULLIS_PASSWORD environment variable"
                    .to_string()
            })?;
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("{server}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{server} refused the collection ({status}): {text}; an admin.users login is needed (--user)"
            ));
        }
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| format!("{server} answered something that is not a gc report ({e})"))?;
        print_report(&report);
        Ok(())
    })
}

/// `portcullis health`: 200 from `url` within 5 s, or an error naming what answered.
fn health(url: &str) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // A probe asks this host's listener: never through a proxy from the environment
        // (container runtimes pass the host's proxy variables on).
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(url).send().await.map_err(|e| {
            format!("{url}: {e}; is the server running with metrics.listen (or --metrics-listen) on that address?")
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            println!("{url}: {}", text.trim());
            Ok(())
        } else {
            Err(format!("{url} answered {status}: {}", text.trim()))
        }
    })
}

/// Checks (and with `repair` repairs) the store in `data`; `true` if it is consistent.
fn fsck(data: &Path, repair: bool) -> Result<bool, String> {
    let meta_path = data.join("meta.redb");
    if !meta_path.is_file() {
        return Err(format!(
            "{} holds no store (no meta.redb); give the --data directory of a portcullis",
            data.display()
        ));
    }
    // Opened first: redb refuses a second opener, so a running server stops us here
    // before anything is read.
    let meta = RedbMetaStore::open(&meta_path).map_err(|e| {
        format!(
            "{e}; is portcullis serving from {}? stop the server first",
            data.display()
        )
    })?;
    let blobs = FsBlobStore::open_as_is(data);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let summary = runtime
        .block_on(portcullis::fsck::run(
            &blobs,
            &meta,
            repair,
            &mut std::io::stdout(),
        ))
        .map_err(|e| e.to_string())?;
    Ok(summary.consistent())
}

/// The configuration of a command that only opens the store.
fn store_config(config: Option<PathBuf>, data: Option<PathBuf>) -> Result<Config, String> {
    load_config(
        config.as_deref(),
        Overrides {
            data_dir: data,
            ..Overrides::default()
        },
    )
}

/// Runs a command on the store from a runtime of its own.
fn with_registry<T>(
    config: &Config,
    run: impl AsyncFnOnce(&Registry) -> Result<T, String>,
) -> Result<T, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let registry = open_registry(config)?;
        run(&registry).await
    })
}

fn export(config: &Config, repos: &[String], out: &Path) -> Result<(), String> {
    let repos = repos
        .iter()
        .map(|r| portcullis::oci::RepoName::parse(r).map_err(|e| format!("{r}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let summary = with_registry(config, async |registry| {
        transfer::layout::export(registry, &repos, out).await
    })?;
    eprintln!("{summary} to {}", out.display());
    Ok(())
}

fn import_layout(config: &Config, path: &Path, repository: Option<&str>) -> Result<(), String> {
    let repository = repository
        .map(|r| portcullis::oci::RepoName::parse(r).map_err(|e| format!("--repository {r}: {e}")))
        .transpose()?;
    let (plan, source) = transfer::layout::read(path, repository.as_ref())?;
    let summary = with_registry(config, async |registry| {
        transfer::apply(registry, plan, &*source).await
    })?;
    eprintln!("{summary} from {}", path.display());
    Ok(())
}

fn import_distribution(config: &Config, tree: &Path) -> Result<(), String> {
    let (plan, source, found) = transfer::distribution::read(tree)?;
    eprintln!("reading registry:2 storage at {found}");
    let summary = with_registry(config, async |registry| {
        transfer::apply(registry, plan, &*source).await
    })?;
    eprintln!("{summary} from {}", tree.display());
    Ok(())
}

/// `portcullis activity export`: the log of a stopped server as JSON lines on stdout.
fn export_activity(config: &Config, filter: &Filter) -> Result<(), String> {
    let data = &config.data_dir;
    let path = data.join(activity::FILE);
    if !path.is_file() {
        return Err(format!(
            "{} holds no activity log (no {}); give the --data directory of a portcullis",
            data.display(),
            activity::FILE
        ));
    }
    let (log, _recorder) = ActivityLog::open(&path, &config.activity).map_err(|e| match e {
        ActivityError::InUse(_) => format!(
            "{e}: a server is running on {}; ask it instead with \
             GET /api/v1/activity?format=jsonl, or stop it first",
            data.display()
        ),
        e => e.to_string(),
    })?;
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    match log.export(filter, out) {
        // A reader such as `head` that has seen enough is no failure.
        Err(ActivityError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map(drop).map_err(|e| e.to_string()),
    }
}

/// Room after `server.shutdown_grace_secs` for the drain's last steps, before pingora
/// drops what still runs.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
// The drain's last steps include the activity log's and the notifications' flushes.
const _: () = assert!(
    activity::FLUSH_BOUND.as_secs() + portcullis::notify::FLUSH_BOUND.as_secs()
        < SHUTDOWN_MARGIN.as_secs()
);

/// Opens the store and runs the pingora server until a signal stops it. With
/// `upgrade`, first takes the listening sockets over from the server running on the
/// same data directory (see [`take_over`]).
fn serve(config: Config, upgrade: bool) -> Result<(), String> {
    let Loaded { auth, certs, tls } = load_files(&config)?;
    let data = &config.data_dir;
    std::fs::create_dir_all(data).map_err(|e| {
        format!(
            "cannot create data directory {} ({e}); choose another with --data",
            data.display()
        )
    })?;
    let grace = config.shutdown_grace.as_secs();
    let conf = ServerConf {
        threads: config.threads,
        // The drain (`ops::Drain`) exits as soon as the last connection closes;
        // this is only pingora's upper bound.
        grace_period_seconds: Some(grace + SHUTDOWN_MARGIN.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // Per data directory, so several instances (tests, replicas) never collide.
        pid_file: data.join("portcullis.pid").display().to_string(),
        upgrade_sock: data.join("portcullis-upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let pid_file = PathBuf::from(&conf.pid_file);
    let old_server = if upgrade {
        Some(take_over(&pid_file, Path::new(&conf.upgrade_sock))?)
    } else {
        None
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // With --upgrade this receives the old server's listening sockets; connections
    // wait in their backlog until this server accepts them.
    server.bootstrap();
    // The old server lets go of the store when it has drained.
    let wait = match old_server {
        Some(_) => config.shutdown_grace + SHUTDOWN_MARGIN * 2,
        None => Duration::ZERO,
    };
    let registry = open_registry_within(&config, wait)?;
    let (activity, recorder) = open_when_free(
        wait,
        data,
        || ActivityLog::open(&data.join(activity::FILE), &config.activity),
        |e| matches!(e, ActivityError::InUse(_)),
    )?;
    let accounts = open_accounts(&config)?;
    let tokens = config
        .auth
        .token
        .clone()
        .map(|t| TokenAuth::open(&config.data_dir, t).map(Arc::new))
        .transpose()?;
    let (auth, policy) = match &accounts {
        Some(accounts) => (
            Arc::new(Authenticator::with_accounts(
                &config.auth,
                Some(accounts.clone()),
            )?),
            Policy::Accounts(accounts.clone()),
        ),
        None => (auth, Policy::Rules(config.access.clone())),
    };
    // pingora writes its pid file only when it daemonizes; operators need it for SIGHUP.
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .map_err(|e| format!("cannot write {} ({e})", pid_file.display()))?;
    if config.metrics.repository_label {
        portcullis::metrics::get().enable_repository_label();
    }
    let mirror = Mirror::new(
        registry.clone(),
        &config.mirror,
        config.limits.max_manifest_bytes,
    )?;
    let collector = Collector::new(registry.clone(), &config);
    let (notifier, delivery) = Notifier::new(&config)?;
    let api = Arc::new(Api {
        collector: collector.clone(),
        notifier: notifier.clone(),
        activity: activity.clone(),
        registry: registry.clone(),
        mirror: mirror.clone(),
        auth: auth.clone(),
        policy,
        accounts: accounts.clone(),
        tokens,
        sessions: portcullis::ui::Sessions::default(),
        read_only: config.read_only,
        max_manifest_bytes: config.limits.max_manifest_bytes,
        upload_slots: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_concurrent_uploads,
        )),
    });
    let http = Arc::new(HttpApp::new(api, config.limits.clone(), config.log.access));
    // One cap per client address across every listener.
    let limiter = ConnectionLimiter::new(config.limits.max_connections_per_ip);
    let listener = |protocol| {
        Listener::new(
            http.clone(),
            protocol,
            limiter.clone(),
            config.limits.header_timeout,
        )
    };

    if !config.listen.is_empty() {
        let mut plain = Service::new("http".to_string(), listener(Protocol::Plain));
        for addr in &config.listen {
            plain.add_tcp(&addr.to_string());
        }
        server.add_service(plain);
    }
    if let Some(tls) = tls.filter(|_| !config.tls_listen.is_empty()) {
        let protocol = Protocol::Tls {
            acceptor: Acceptor::from_server_config(tls),
            redirect: config.redirect_to_https,
        };
        let mut secure = Service::new("https".to_string(), listener(protocol));
        for addr in &config.tls_listen {
            secure.add_tcp(&addr.to_string());
        }
        server.add_service(secure);
    }
    if let Some(addr) = config.metrics.listen {
        let ops = Ops {
            mirror,
            check_upstreams: config.metrics.check_upstreams,
        };
        let mut monitoring = Service::new(
            "metrics".to_string(),
            pingora::apps::http_app::HttpServer::new_app(ops),
        );
        monitoring.add_tcp(&addr.to_string());
        server.add_service(monitoring);
    }
    server.add_service(background_service(
        "reload on SIGHUP",
        Reloader { certs, auth },
    ));
    let flush = registry.clone();
    let used = accounts.clone();
    if let Some(accounts) = &accounts {
        server.add_service(background_service(
            "last-used times of robots and tokens",
            accounts::LastUsedWriter(accounts.clone()),
        ));
    }
    server.add_service(background_service(
        "drain at shutdown",
        Drain {
            grace: config.shutdown_grace,
            finishers: vec![
                Box::new(move || {
                    let registry = flush.clone();
                    Box::pin(async move {
                        if let Err(e) = registry.flush_access().await {
                            tracing::warn!("access times not saved at shutdown: {e}");
                        }
                    })
                }),
                Box::new(move || {
                    let accounts = used.clone();
                    Box::pin(async move {
                        let Some(accounts) = accounts else { return };
                        if let Err(e) = accounts.flush_last_used().await {
                            tracing::warn!("last-used times not saved at shutdown: {e}");
                        }
                    })
                }),
                // No request can record more now: save what waits.
                Box::new(move || {
                    let activity = activity.clone();
                    Box::pin(async move {
                        if let Err(e) = activity.flush().await {
                            tracing::warn!("at shutdown: {e}");
                        }
                    })
                }),
                // No request can make another event now: deliver what is queued.
                Box::new(move || {
                    let notifier = notifier.clone();
                    Box::pin(async move { notifier.flush().await })
                }),
                // A stale pid file would name whatever process gets the number next.
                Box::new(move || {
                    let pid_file = pid_file.clone();
                    Box::pin(async move { remove_own_pid_file(&pid_file) })
                }),
                // Last: the log lines still waiting, those of the steps above too.
                Box::new(|| Box::pin(async { portcullis::logging::flush_server() })),
            ],
        },
    ));
    server.add_service(background_service(
        "garbage collection, cache cap, access times",
        Maintenance(collector),
    ));
    server.add_service(background_service("webhook notifications", delivery));
    server.add_service(background_service("activity log", recorder));
    tracing::info!(
        listen = ?config.listen,
        tls_listen = ?config.tls_listen,
        metrics_listen = ?config.metrics.listen,
        data = %data.display(),
        read_only = config.read_only,
        upstreams = ?config.mirror.upstreams.iter().map(|u| &u.name).collect::<Vec<_>>(),
        notifications = ?config.notifications.iter().map(|n| &n.name).collect::<Vec<_>>(),
        offline = config.mirror.offline,
        upgraded_from = ?old_server,
        "portcullis serving"
    );
    server.run_forever()
}

/// Removes the pid file if it still names this process (after an upgrade it names
/// the new server).
fn remove_own_pid_file(pid_file: &Path) {
    let ours = std::fs::read_to_string(pid_file)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(pid_file);
    }
}

/// The first half of `serve --upgrade`: finds the running server by its pid file and
/// sends it SIGQUIT as soon as this process listens on the upgrade socket (which
/// pingora's bootstrap creates), so the old server hands over its listening sockets.
/// Returns the old server's pid.
fn take_over(pid_file: &Path, upgrade_sock: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        format!(
            "--upgrade: cannot read {} ({e}); is a server running on this --data?",
            pid_file.display()
        )
    })?;
    let pid: i32 = text.trim().parse().map_err(|_| {
        format!(
            "--upgrade: {} does not hold a process id",
            pid_file.display()
        )
    })?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return Err(format!(
            "--upgrade: process {pid} from {} is not running; start without --upgrade",
            pid_file.display()
        ));
    }
    // A pid file left by a server that did not stop cleanly may name another program.
    let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !program.trim().starts_with("portcullis") {
        return Err(format!(
            "--upgrade: {} names process {pid}, which is {:?}, not a portcullis server; \
             remove the stale file and start without --upgrade",
            pid_file.display(),
            program.trim()
        ));
    }
    // A socket file left by an earlier upgrade would make the signal go out too early.
    let _ = std::fs::remove_file(upgrade_sock);
    let sock = upgrade_sock.to_path_buf();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sock.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: sends a signal to a process id read from our own pid file.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    });
    Ok(pid)
}
