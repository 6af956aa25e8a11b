//! Streaming log parsers (being written).
