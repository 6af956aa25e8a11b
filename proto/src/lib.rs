//! The labwire gRPC API: generated messages and services of `labwire.v1`, plus conversions
//! between protobuf's `Struct`/`Timestamp` and serde_json/chrono values used on both sides.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Generated code for the `labwire.v1` package.
pub mod v1 {
    tonic::include_proto!("labwire.v1");
}

/// The Labgrid coordinator's protocol, as far as the agent speaks it (package `labgrid`).
pub mod labgrid {
    tonic::include_proto!("labgrid");
}

pub mod codec;
pub mod convert;

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/labwire_descriptor.bin"));

/// Metadata key carrying a client's bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The largest gRPC message either side accepts (16 MiB). Log chunks and result trees must
/// fit; larger requests are refused with RESOURCE_EXHAUSTED.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
