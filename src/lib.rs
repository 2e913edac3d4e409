//! `portcullis`: a container-registry gateway. See README.md for a tour.
//!
//! Request path (and module tree): `edge` (listeners, TLS, HTTP loop) -> `auth` (who is
//! calling, what they may do; `accounts` holds users, teams and namespaces) -> `api`
//! (routing, handlers; `/token` for Docker token auth, `rest` for `/api/v1/`, `ui` for the
//! web pages) -> `store` (content-addressed blobs + metadata). `oci` holds the vocabulary, `config` the validated settings;
//! `notify` tells webhook endpoints what was pushed, pulled and deleted; `activity` keeps
//! a searchable log of it (and of account changes).
//!
//! A library so that the fuzz targets in `fuzz/` reach the parsers; the binary in
//! `main.rs` is the only other user.

pub mod accounts;
pub mod activity;
pub mod api;
pub mod auth;
pub mod certs;
pub mod config;
pub mod edge;
pub mod fsck;
pub mod gc;
pub mod logging;
pub mod manage;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod oci;
pub mod ops;
pub mod progress;
pub mod rest;
pub mod store;
pub mod transfer;
pub mod ui;
