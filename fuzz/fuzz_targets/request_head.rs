//! The request path of the edge: raw bytes from a client go through pingora's
//! HTTP/1 parser, our refusals (400/408/414/431/501/505) and limits, authentication,
//! routing and the handlers, over a real store in a temporary directory. Every input
//! must end with an answer or a close, never a panic; an answer is HTTP/1.1 and never
//! a server fault (5xx other than 501/505 for what the client sent, or 507 for a full
//! disk).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use portcullis::activity::{self, ActivityLog};
use portcullis::api::Api;
use portcullis::auth::access::AccessRules;
use portcullis::auth::policy::Policy;
use portcullis::auth::Authenticator;
use portcullis::config::{self, Overrides};
use portcullis::edge::HttpApp;
use portcullis::gc::Collector;
use portcullis::mirror::Mirror;
use portcullis::notify::Notifier;
use portcullis::store::{FsBlobStore, RedbMetaStore, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use std::sync::{Arc, LazyLock};

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Arc<HttpApp>,
    _dir: tempfile::TempDir,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config::from_text("", "fuzz", Vec::new(), Overrides::default()).unwrap();
    let blobs = FsBlobStore::open(dir.path()).unwrap();
    let meta = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let registry = Arc::new(Registry::new(Arc::new(blobs), Arc::new(meta), 0));
    // Without its recorder nothing is written: the queue fills, then drops (bounded).
    let (activity, _recorder) =
        ActivityLog::open(&dir.path().join(activity::FILE), &config.activity).unwrap();
    let api = Api {
        activity,
        collector: Collector::new(registry.clone(), &config),
        notifier: Notifier::new(&config).unwrap().0,
        mirror: Mirror::new(registry.clone(), &config.mirror, config.limits.max_manifest_bytes)
            .unwrap(),
        registry,
        auth: Arc::new(Authenticator::new(&config.auth).unwrap()),
        policy: Policy::Rules(AccessRules::default_for(false, Default::default())),
        accounts: None,
        tokens: None,
        sessions: portcullis::ui::Sessions::default(),
        read_only: false,
        max_manifest_bytes: config.limits.max_manifest_bytes,
        upload_slots: Arc::new(tokio::sync::Semaphore::new(4)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Harness {
        runtime,
        app: Arc::new(HttpApp::new(Arc::new(api), config.limits, false)),
        _dir: dir,
    }
});

fuzz_target!(|input: &[u8]| {
    let harness = &*HARNESS;
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let answer = harness.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serve = async {
            let session = ServerSession::new_http1(Box::new(server));
            // Dropping the connection (reusable or not) ends the client's read.
            drop(harness.app.process_new_http(session, &shutdown).await);
        };
        let talk = async {
            let (mut rx, mut tx) = tokio::io::split(&mut client);
            let send = async {
                let _ = tx.write_all(input).await;
                let _ = tx.shutdown().await;
            };
            let mut answer = Vec::new();
            let receive = rx.read_to_end(&mut answer);
            let (_, _) = tokio::join!(send, receive);
            answer
        };
        tokio::join!(serve, talk).1
    });
    if answer.is_empty() {
        return;
    }
    assert!(answer.starts_with(b"HTTP/1.1 "), "not an HTTP answer: {answer:?}");
    let status = &answer[9..12.min(answer.len())];
    assert!(status.first() != Some(&b'5') || status == b"505" || status == b"501" || status == b"507",
        "{} for {input:?}", String::from_utf8_lossy(status));
});
