//! The gRPC codec of the API: prost's, except that a message that cannot be decoded is
//! refused with INVALID_ARGUMENT instead of INTERNAL. gRPC names INTERNAL for parse errors,
//! but our agents retry INTERNAL (the coordinator's own failures), and a message that does
//! not decode (nested deeper than prost's limit of 100 levels, or garbage) fails the same
//! way every time: the sender must be told that its message is at fault.

use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost's codec with decode errors as INVALID_ARGUMENT (the generated clients and servers
/// use it; see `build.rs`).
#[derive(Debug, Clone)]
pub struct LabwireCodec<T, U> {
    inner: ProstCodec<T, U>,
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LabwireCodec<T, U> {
    fn default() -> Self {
        LabwireCodec {
            inner: ProstCodec::default(),
            _pd: PhantomData,
        }
    }
}

impl<T, U> Codec for LabwireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LabwireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LabwireDecoder(self.inner.decoder())
    }
}

/// Prost's decoder with its errors as INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct LabwireDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for LabwireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| {
            Status::invalid_argument(format!(
                "the message cannot be decoded (it is malformed, or nested deeper than 100 levels): {}",
                e.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
