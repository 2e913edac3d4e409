//! Debian's `docker-registry` (CNCF distribution 2.8) as a child process: a second,
//! real upstream for the pull-through cache, with its own filesystem storage.
// Only some test binaries use it.
#![allow(dead_code)]

use super::{log_tail, release_ports, scratch_dir, spawn_until_ready, Attempt};
use std::fs;
use std::process::{Child, Command};

const BINARY: &str = "/usr/bin/docker-registry";

pub struct Distribution {
    child: Child,
    port: u16,
    log_path: std::path::PathBuf,
    _scratch: tempfile::TempDir,
}

impl Distribution {
    /// Starts an empty registry on a free loopback port (plain HTTP, no auth).
    pub fn start() -> Distribution {
        Distribution::launch("")
    }

    /// [`Distribution::start`] with deletes enabled and every event POSTed to `url`
    /// (registry:2's notifications, one attempt per second while the endpoint fails).
    pub fn start_notifying(url: &str) -> Distribution {
        Distribution::launch(&format!(
            "  delete:\n    enabled: true\nnotifications:\n  endpoints:\n    - name: test\n      \
             url: {url}\n      timeout: 5s\n      threshold: 1\n      backoff: 1s\n"
        ))
    }

    /// `extra` follows the `storage` keys in the configuration (indented to continue it).
    fn launch(extra: &str) -> Distribution {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "ENVIRONMENT: {BINARY} is missing; install Debian's docker-registry package"
        );
        let scratch = scratch_dir("portcullis-distribution-");
        let storage = scratch.path().join("storage");
        fs::create_dir(&storage).expect("create registry storage");
        let config = scratch.path().join("config.yml");
        let (child, ports, log_path) = spawn_until_ready(&scratch, |_| {
            let port = super::free_port();
            fs::write(
                &config,
                format!(
                    "version: 0.1\nhttp:\n  addr: 127.0.0.1:{port}\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n{extra}",
                    storage.display()
                ),
            )
            .expect("write registry config");
            // `env -i`: stray REGISTRY_* variables would override the config.
            let mut command = Command::new(BINARY);
            command.env_clear().arg("serve").arg(&config);
            Attempt {
                command,
                ports: vec![port],
                context: format!("docker-registry on 127.0.0.1:{port}"),
                ready: |ports| super::probe_v2(ports[0]) == Some(200),
            }
        });
        Distribution {
            child,
            port: ports[0],
            log_path,
            _scratch: scratch,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host_port())
    }

    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- docker-registry log ----\n{}\n---- end ----",
                log_tail(&self.log_path)
            );
        }
        release_ports(&[self.port]);
    }
}

impl Distribution {
    /// The filesystem storage directory (`storage.filesystem.rootdirectory`).
    pub fn storage(&self) -> std::path::PathBuf {
        self._scratch.path().join("storage")
    }

    /// Stops the registry and keeps its storage, as an operator does before migrating.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
