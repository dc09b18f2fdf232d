//! shoal: an HTTP/1.1 load balancer with built-in gossip membership.
//!
//! Data flows one way: the backend set ([`balance`]) is published as a snapshot that the per-core data plane
//! ([`proxy`]) reads; framing rules live in [`http`], independent of sockets.

pub mod admin;
pub mod agent;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod host;
pub mod http;
pub mod logging;
pub mod memory;
pub mod proxy;
pub mod signals;
pub mod webapp;
