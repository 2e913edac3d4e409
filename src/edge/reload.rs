//! SIGHUP: re-read certificates and the htpasswd file without a restart. Connections
//! in flight are untouched; new handshakes and logins see the new files. On an error
//! (a half-written file, say) the old settings stay and the error is logged.

use super::tls::CertStore;
use crate::auth::Authenticator;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub struct Reloader {
    pub certs: Option<Arc<CertStore>>,
    pub auth: Arc<Authenticator>,
}

impl Reloader {
    fn reload(&self) {
        if let Some(certs) = &self.certs {
            match certs.reload() {
                Ok(()) => tracing::info!("certificates reloaded"),
                Err(e) => tracing::error!("certificates not reloaded, keeping the old ones: {e}"),
            }
        }
        if self.auth.enabled() {
            match self.auth.reload() {
                Ok(users) => tracing::info!(users, "htpasswd reloaded"),
                Err(e) => tracing::error!("htpasswd not reloaded, keeping the old users: {e}"),
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload needs a restart: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => self.reload(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
