//! `portcullis`: a container-registry gateway. See README.md for a tour.
//!
//! Request path (and module tree): `edge` (connections) -> `api` (routing, handlers)
//! -> `store` (content-addressed blobs + metadata). `oci` holds the vocabulary.

mod api;
mod config;
mod edge;
mod oci;
mod store;

use clap::{Parser, Subcommand};
use config::{Config, Overrides, RawConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;
use store::{FsBlobStore, RedbMetaStore, Registry};

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
        /// TOML configuration file (see conf/portcullis.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, IP:PORT; overrides server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Directory for blobs and metadata; overrides storage.data_dir.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen, data } => load_config(config, Overrides { listen, data_dir: data })
            .and_then(serve),
    };
    if let Err(message) = result {
        eprintln!("portcullis: {message}");
        std::process::exit(2);
    }
}

fn load_config(path: Option<PathBuf>, overrides: Overrides) -> Result<Config, String> {
    let (raw, origin) = match &path {
        Some(p) => (RawConfig::from_file(p).map_err(|e| e.to_string())?, p.display().to_string()),
        None => (RawConfig::default(), "built-in defaults".to_string()),
    };
    raw.resolve(&origin, overrides).map_err(|e| e.to_string())
}

/// Opens the store and runs the pingora server until a signal stops it.
fn serve(config: Config) -> Result<(), String> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data)
        .map_err(|e| format!("cannot create data directory {} ({e}); choose another with --data", data.display()))?;
    let blobs = FsBlobStore::open(data).map_err(|e| e.to_string())?;
    let meta = RedbMetaStore::open(&data.join("meta.redb"))
        .map_err(|e| format!("{e}; is another portcullis using {}?", data.display()))?;
    let registry = Arc::new(Registry::new(Arc::new(blobs), Arc::new(meta)));

    let mut conf = ServerConf::default();
    conf.threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    conf.grace_period_seconds = Some(1);
    conf.graceful_shutdown_timeout_seconds = Some(5);
    // Per data directory, so several instances (tests, replicas) never collide.
    conf.pid_file = data.join("portcullis.pid").display().to_string();
    conf.upgrade_sock = data.join("portcullis-upgrade.sock").display().to_string();

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("registry".to_string(), edge::RegistryApp::new(registry));
    service.add_tcp(&config.listen.to_string());
    server.add_service(service);
    tracing::info!(listen = %config.listen, data = %data.display(), "portcullis serving");
    server.run_forever()
}
