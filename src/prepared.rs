//! [`Prepared`]: a message encoded once, to send to many sessions.

use bytes::Bytes;
use serde::Serialize;

use crate::error::SendError;
use crate::protocol::codec::Payload;

/// A message encoded once, to send to any number of sessions with
/// [`Sender::send_prepared`](crate::Sender::send_prepared),
/// [`Lane::send_prepared`](crate::Lane::send_prepared), a [`Group`](crate::Group) or a server-wide
/// broadcast. Cloning it is cheap (the bytes are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    payload: Bytes,
}

impl Prepared {
    /// Encodes `value` with bincode, once (the same encoding as
    /// [`Sender::send`](crate::Sender::send)).
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Prepared, SendError> {
        let payload = Payload::encode(value)?;
        Ok(Prepared {
            payload: payload.into_bytes(),
        })
    }

    /// Raw bytes as a message (received as they are by `recv_bytes`).
    pub fn from_bytes(payload: impl Into<Bytes>) -> Prepared {
        Prepared {
            payload: payload.into(),
        }
    }

    /// The encoded message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// The shared bytes (cloning them copies nothing).
    pub(crate) fn payload(&self) -> Bytes {
        self.payload.clone()
    }
}
