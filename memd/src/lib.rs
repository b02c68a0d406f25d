//! farmem-memd: the far-memory server, its wire protocol, and the client every other farmem crate uses.
//!
//! A memd process holds pages (4 KiB, keyed by region and page number) and objects (1 B – 1 MiB, keyed by data
//! structure and object id) for authenticated tenants, in stores bounded by a capacity: pages and large values are
//! reference-counted buffers that read replies send straight from the store ([`outbuf`]), small objects live in
//! slabs. Clients speak a length-prefixed binary protocol (see `PROTOCOL.md`) over TCP or a Unix socket; every
//! request carries an id, so one connection carries many requests in flight and the server may answer out of order.
//!
//! The [`far::FarStore`] trait is what paging and object code is written against. It has two implementations:
//! the network [`client::Client`] (synchronous, std sockets only, pipelined, reconnecting) and the in-process
//! [`far::MemStore`], which runs the server's own [`store::Engine`] through the same codec.
//!
//! memd keeps no `unsafe` code.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod far;
pub mod internal;
pub mod offload;
pub mod outbuf;
pub mod proto;
pub mod server;
pub mod session;
pub mod store;
pub mod testing;

pub use client::{Client, ClientConfig};
pub use far::{FarStore, MemStore, Pending, StoreError};
pub use proto::{ObjBatch, Reply, Request, PAGE_SIZE};
