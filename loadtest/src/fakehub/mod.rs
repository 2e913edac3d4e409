//! `portcullis-loadtest fake-hub`: a simulated Docker Hub on this machine, for the
//! pull-through cache's tests and for the load generator.
//!
//! Two loopback listeners: the registry (registry-1.docker.io: `/v2/`, the token realm
//! `/token`, and the control API `/_control/`) and a CDN that blob GETs are redirected
//! to. Content comes from OCI image layouts on disk (`content`), tokens from `auth`,
//! injected misbehaviour from `faults`; `http` is the hand-written HTTP/1.1 that lets
//! the faults cut, corrupt or stall responses byte by byte.

mod auth;
mod content;
mod control;
mod faults;
mod http;
mod registry;
mod routes;

use crate::guard::{check_loopback, pinned_localhost};
use clap::{Args, ValueEnum};
use faults::{FaultKind, FaultRules, Subject, Target};
use http::{Connection, ReadError, Request, Response, Shaping};
use reqwest::Url;
use serde::Serialize;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[derive(Args)]
pub struct FakeHubArgs {
    /// Directory of repositories: DIR/<repository>/ is an OCI image layout.
    #[arg(long)]
    content: PathBuf,
    /// Registry listener (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// CDN listener that blob downloads are redirected to (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    cdn_listen: String,
    /// Once both listeners are bound, write {"registry":"HOST:PORT","cdn":"HOST:PORT"} here.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Authentication of the registry: Docker Hub's bearer tokens, or none.
    #[arg(long, value_enum, default_value_t = AuthMode::Token)]
    auth: AuthMode,
    /// Lifetime of tokens; 0 omits expires_in from token responses (clients then assume 60 s).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=MAX_TOKEN_SECS))]
    token_expires_secs: u64,
    /// USER:PASSWORD the token realm requires as Basic auth (anonymous requests get 401).
    #[arg(long)]
    credentials: Option<String>,
    /// The service name in challenges and token requests.
    #[arg(long, default_value = "registry.docker.io")]
    service: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    Token,
    None,
}

/// Longest token lifetime accepted (a year): far beyond any test, and no overflow.
const MAX_TOKEN_SECS: u64 = 365 * 24 * 3600;

/// Docker Hub's anonymous pull limit, as its `ratelimit-limit` header states it.
const RATE_LIMIT: u32 = 100;

/// Which listener a request came in on.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Side {
    Registry,
    Cdn,
}

/// One line of `GET /_control/requests`.
#[derive(Serialize)]
struct LoggedRequest {
    listener: Side,
    method: String,
    /// Path and query.
    path: String,
    range: Option<String>,
    authorization: &'static str,
    /// 0: no answer was sent (`stall`, `drop`).
    status: u16,
    fault: Option<&'static str>,
    accept: Option<String>,
}

/// Token realm settings.
struct AuthSettings {
    mode: AuthMode,
    token_expires_secs: u64,
    credentials: Option<(String, String)>,
    service: String,
}

/// Everything the listeners share.
struct Hub {
    content: content::Content,
    auth: AuthSettings,
    tokens: auth::TokenStore,
    faults: Mutex<FaultRules>,
    log: Mutex<Vec<LoggedRequest>>,
    /// What `ratelimit-remaining` says: one less for every manifest GET served.
    rate_remaining: AtomicU32,
    registry_addr: SocketAddr,
    cdn_addr: SocketAddr,
}

/// A lock that a panicked holder cannot poison for everyone else.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the fake hub until the process is killed.
pub fn run(args: FakeHubArgs) -> Result<(), String> {
    if !args.content.is_dir() {
        return Err(format!(
            "--content {}: not a directory",
            args.content.display()
        ));
    }
    let credentials = args
        .credentials
        .as_deref()
        .map(|c| {
            c.split_once(':')
                .filter(|(user, _)| !user.is_empty())
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .ok_or("--credentials must be USER:PASSWORD")
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let registry = bind(&args.listen, "--listen")?;
        let cdn = bind(&args.cdn_listen, "--cdn-listen")?;
        let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
        let hub = Arc::new(Hub {
            content: content::Content::new(args.content.clone()),
            auth: AuthSettings {
                mode: args.auth,
                token_expires_secs: args.token_expires_secs,
                credentials,
                service: args.service.clone(),
            },
            tokens: auth::TokenStore::default(),
            faults: Mutex::default(),
            log: Mutex::default(),
            rate_remaining: AtomicU32::new(RATE_LIMIT),
            registry_addr: local(&registry)?,
            cdn_addr: local(&cdn)?,
        });
        announce(&hub, args.ready_file.as_deref())?;
        tokio::join!(
            accept_loop(hub.clone(), Side::Registry, registry),
            accept_loop(hub, Side::Cdn, cdn)
        );
        Ok(())
    })
}

/// Binds a loopback listener; SO_REUSEADDR so a restarted hub gets its old port back.
fn bind(text: &str, flag: &str) -> Result<TcpListener, String> {
    let url = Url::parse(&format!("http://{text}/"))
        .map_err(|e| format!("{flag} {text:?}: expected HOST:PORT ({e})"))?;
    check_loopback(&url).map_err(|e| format!("{flag}: {e}"))?;
    let addr = match pinned_localhost(&url) {
        Some((_, addr)) => addr,
        None => text
            .parse::<SocketAddr>()
            .map_err(|e| format!("{flag} {text:?}: expected IP:PORT ({e})"))?,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(1024)
        })
        .map_err(|e| format!("{flag}: cannot listen on {addr}: {e}"))
}

/// Writes the ready line to the ready file (atomically) and to stdout.
fn announce(hub: &Hub, ready_file: Option<&Path>) -> Result<(), String> {
    let line = serde_json::json!({
        "registry": hub.registry_addr.to_string(),
        "cdn": hub.cdn_addr.to_string(),
    })
    .to_string();
    if let Some(path) = ready_file {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{line}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write --ready-file {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

async fn accept_loop(hub: Arc<Hub>, side: Side, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(hub.clone(), side, stream));
            }
            Err(e) => {
                // Out of descriptors, say: back off instead of spinning.
                eprintln!("fake-hub: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How one request is answered.
struct Exchange {
    /// `None`: no answer at all (`stall`, `drop`).
    response: Option<Response>,
    fault: Option<FaultKind>,
}

async fn serve_connection(hub: Arc<Hub>, side: Side, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(stream);
    loop {
        let request = match connection.next_request().await {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Closed) => return,
            Err(ReadError::Refused(status, message)) => {
                eprintln!("fake-hub: refusing a request: {status} {message}");
                let response = Response::new(status).text(&message);
                let _ = connection
                    .send(&response, false, true, &Shaping::default())
                    .await;
                connection.close_cleanly().await;
                return;
            }
        };
        let close = request.wants_close();
        let Exchange { response, fault } = hub.exchange(side, &request);
        let Some(response) = response else {
            if fault == Some(FaultKind::Stall) {
                connection.wait_for_client_close().await;
            }
            return;
        };
        let shaping = fault.as_ref().map(FaultKind::shaping).unwrap_or_default();
        let sent = connection
            .send(&response, request.is_head(), close, &shaping)
            .await;
        match fault {
            _ if sent.is_err() => return,
            Some(FaultKind::Truncate { .. }) => return connection.close_cleanly().await,
            Some(FaultKind::Reset { .. }) => return connection.reset(),
            _ if close => return connection.close_cleanly().await,
            _ => {}
        }
    }
}

impl Hub {
    /// Decides the answer to one request: the control API, else the first matching
    /// fault or the normal response; records it in the request log.
    fn exchange(&self, side: Side, request: &Request) -> Exchange {
        let route = match side {
            Side::Registry => routes::registry_route(request.path()),
            Side::Cdn => routes::RegistryRoute::Unknown,
        };
        if let routes::RegistryRoute::Control(what) = route {
            return Exchange {
                response: Some(self.control(request, what)),
                fault: None,
            };
        }
        let subject = Subject {
            target: match side {
                Side::Registry => route.fault_target(),
                Side::Cdn => Some(Target::Cdn),
            },
            method: &request.method,
            path: &request.target,
        };
        let fault = lock(&self.faults).take(&subject);
        let response = match &fault {
            Some(FaultKind::Stall | FaultKind::Drop) => None,
            Some(FaultKind::Status { status }) => Some(registry::injected_status(*status)),
            Some(FaultKind::RateLimit { retry_after_secs }) => {
                Some(registry::rate_limited(*retry_after_secs))
            }
            _ => Some(match side {
                Side::Registry => self.respond_registry(request, &route),
                Side::Cdn => self.respond_cdn(request),
            }),
        };
        self.record(side, request, response.as_ref(), fault.as_ref());
        Exchange { response, fault }
    }

    fn record(
        &self,
        side: Side,
        request: &Request,
        response: Option<&Response>,
        fault: Option<&FaultKind>,
    ) {
        let status = response.map_or(0, |r| r.status);
        let fault = fault.map(FaultKind::name);
        eprintln!(
            "fake-hub: {} {} {} -> {status}{}",
            match side {
                Side::Registry => "registry",
                Side::Cdn => "cdn",
            },
            request.method,
            request.target,
            fault.map(|f| format!(" (fault {f})")).unwrap_or_default()
        );
        let accept: Vec<&str> = request.header_values("accept").collect();
        lock(&self.log).push(LoggedRequest {
            listener: side,
            method: request.method.clone(),
            path: request.target.clone(),
            range: request.header("range").map(str::to_string),
            authorization: auth::scheme_of(request.header("authorization")),
            status,
            fault,
            accept: (!accept.is_empty()).then(|| accept.join(", ")),
        });
    }
}
