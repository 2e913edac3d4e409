//! The configuration file: any text is a validated config or an error naming the
//! file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::config::{self, Overrides};

fuzz_target!(|text: &str| {
    match config::from_text(text, "fuzz.toml", Vec::new(), Overrides::default()) {
        Ok(config) => assert!(!config.listen.is_empty() || !config.tls_listen.is_empty()),
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
    }
});
