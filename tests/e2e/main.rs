//! The end-to-end tests, one binary with a module per theme (one link instead of one per
//! file): each starts the real `labwire-coordinator`, `labwire-agent` and `labwire` binaries
//! (and, where a test needs them, PostgreSQL, QEMU, LAVA, Labgrid or Chromium) and checks
//! what a user would see. `docs/testing.md` says what each module proves. Run one module
//! with `cargo nextest run --test e2e skeleton::`.

mod common;

mod borrow;
mod cli;
mod configs;
mod dashboard;
mod docs;
mod failover;
mod grub;
mod health;
mod hostile_agent;
mod hostile_net;
mod hostile_queue;
mod hostile_results;
mod http;
mod kernelci;
mod lab_report;
mod labgrid;
mod lava;
mod liveness;
mod migrate;
mod packages;
mod reliability;
mod replicas;
mod report;
mod scheduling;
mod serial;
mod skeleton;
mod systemd;
mod trigger;
mod uboot;
