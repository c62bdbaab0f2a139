//! The client driver: connects over quinn and runs [`ClientHandshake`] to a [`Session`].

use std::future::pending;
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use super::endpoint;
use super::link::{Closer, Link, disconnect_from_peer};
use super::stream::{FrameReader, FrameWriter, ReadFailure};
use crate::config::ClientConfig;
use crate::error::{ConnectError, Disconnect};
use crate::protocol::codec::{decode_message, encode_message};
use crate::protocol::{
    ChannelKind, ClientFailure, ClientHandshake, ClientHandshakeConfig, ClientOutput,
    HANDSHAKE_FRAME_LIMIT, HandshakeStep, Reason,
};
use crate::session::{ChannelParts, Session};

/// One of the client's two streams.
struct Stream {
    reader: FrameReader,
    writer: FrameWriter,
}

/// Connects to `config.server` and completes the handshake.
pub(crate) async fn connect(config: &ClientConfig) -> Result<Session, ConnectError> {
    config.validate()?;
    let deadline = super::deadline_after(config.handshake_timeout);
    let endpoint = endpoint::client(config)?;
    let connecting = endpoint.connect(config.server, &config.server_name)?;
    let conn = match tokio::time::timeout_at(deadline.into(), connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(quinn::ConnectionError::TimedOut)) | Err(_) => {
            return Err(ConnectError::TimedOut {
                step: HandshakeStep::Quic,
            });
        }
        Ok(Err(e)) => return Err(ConnectError::Transport(e)),
    };
    let link = Link::new(Closer::new(conn), Some(endpoint));
    let result = handshake(link.clone(), config, deadline).await;
    if let Err(error) = &result {
        // Whatever stopped the handshake, the server learns why.
        let reason = match error {
            ConnectError::Refused { reason, .. } | ConnectError::ServerViolation { reason, .. } => {
                Some(*reason)
            }
            ConnectError::TimedOut { .. } => Some(Reason::HandshakeTimeout),
            _ => None,
        };
        if let Some(reason) = reason {
            link.close(reason, &error.to_string());
        }
    }
    result
}

/// The token handshake on a connected link.
async fn handshake(
    link: Link,
    config: &ClientConfig,
    deadline: Instant,
) -> Result<Session, ConnectError> {
    let mut core = ClientHandshake::new(ClientHandshakeConfig {
        deadline,
        credentials: config.credentials.clone(),
        feed_init_timeout: config.feed_init_timeout,
        feed_init_attempts: config.feed_init_attempts,
        local_limits: config.frame_limits,
    });
    let mut main: Option<Stream> = None;
    let mut feed: Option<Stream> = None;

    loop {
        while let Some(output) = core.poll_output() {
            match output {
                ClientOutput::Send(channel, message) => {
                    let frame = encode_message(&message)
                        .map_err(|e| crate::error::ConfigError::Invalid(e.to_string()))?;
                    let slot = match channel {
                        ChannelKind::Main => &mut main,
                        ChannelKind::Feed => &mut feed,
                    };
                    let step = core.step().unwrap_or(HandshakeStep::FinalAuth);
                    write(&link, slot, channel, frame, deadline, step).await?;
                }
                ClientOutput::Established(established) => {
                    let (Some(main), Some(feed)) = (main, feed) else {
                        return Err(ConnectError::ServerViolation {
                            reason: Reason::UnexpectedMessage,
                            message: "CONN_OK before both channels were open".into(),
                        });
                    };
                    let local = config.frame_limits;
                    let peer = established.peer_limits;
                    debug!(player_id = %established.player_id, "handshake complete");
                    return Ok(Session::new(
                        link,
                        established.player_id,
                        ChannelParts::new(
                            ChannelKind::Main,
                            main.writer,
                            main.reader,
                            established.main_rules,
                            local,
                            peer,
                        ),
                        ChannelParts::new(
                            ChannelKind::Feed,
                            feed.writer,
                            feed.reader,
                            established.feed_rules,
                            local,
                            peer,
                        ),
                    ));
                }
                ClientOutput::Failed(failure) => {
                    return Err(match failure {
                        ClientFailure::Refused { reason, message } => {
                            ConnectError::Refused { reason, message }
                        }
                        ClientFailure::TimedOut { step } => ConnectError::TimedOut { step },
                        ClientFailure::ServerViolation { reason, message } => {
                            ConnectError::ServerViolation { reason, message }
                        }
                    });
                }
            }
        }

        let timer = core.poll_timeout().unwrap_or(deadline);
        let read_main = core.wants_to_read(ChannelKind::Main);
        let read_feed = core.wants_to_read(ChannelKind::Feed);
        tokio::select! {
            result = next_frame(&mut main), if read_main => {
                on_frame(&mut core, ChannelKind::Main, result)?;
            }
            result = next_frame(&mut feed), if read_feed => {
                on_frame(&mut core, ChannelKind::Feed, result)?;
            }
            _ = tokio::time::sleep_until(timer.into()) => core.handle_timeout(Instant::now()),
        }
    }
}

async fn next_frame(stream: &mut Option<Stream>) -> Result<Bytes, ReadFailure> {
    match stream {
        Some(s) => s.reader.next_frame().await,
        None => pending().await,
    }
}

/// Feeds a read result to the handshake. A lost connection ends the connect call.
fn on_frame(
    core: &mut ClientHandshake,
    channel: ChannelKind,
    result: Result<Bytes, ReadFailure>,
) -> Result<(), ConnectError> {
    match result {
        Ok(body) => match decode_message(body) {
            Ok(message) => core.handle_message(channel, message, Instant::now()),
            Err(e) => core.handle_violation(e.reason(), format!("{channel}: {e}")),
        },
        Err(ReadFailure::Decode(e)) => core.handle_violation(e.reason(), format!("{channel}: {e}")),
        Err(ReadFailure::Finished) => core.handle_violation(
            Reason::InvalidStream,
            format!("{channel}: finished during the handshake"),
        ),
        Err(ReadFailure::StreamEnded(detail)) => {
            core.handle_violation(Reason::InvalidStream, format!("{channel}: {detail}"))
        }
        Err(ReadFailure::Connection(e)) => {
            return Err(lost(e, core.step().unwrap_or(HandshakeStep::FinalAuth)));
        }
    }
    Ok(())
}

/// The error for a connection lost mid-handshake at `step`: a server that closed with a reason
/// refused us (its `CONN_FAILED` may not have been read yet); a silent path timed out; anything
/// else, a plain close included, is a transport failure.
fn lost(error: quinn::ConnectionError, step: HandshakeStep) -> ConnectError {
    match disconnect_from_peer(&error) {
        Disconnect::ByPeer { reason, message } if reason != Reason::Normal => {
            ConnectError::Refused { reason, message }
        }
        Disconnect::TimedOut => ConnectError::TimedOut { step },
        _ => ConnectError::Transport(error),
    }
}

/// Writes a handshake frame on `channel`, opening and declaring its stream first if needed.
async fn write(
    link: &Link,
    slot: &mut Option<Stream>,
    channel: ChannelKind,
    frame: Bytes,
    deadline: Instant,
    step: HandshakeStep,
) -> Result<(), ConnectError> {
    let write = async {
        match slot {
            Some(stream) => stream.writer.write(frame).await,
            None => {
                let (send, recv) = link
                    .connection()
                    .open_bi()
                    .await
                    .map_err(quinn::WriteError::ConnectionLost)?;
                let stream = slot.insert(Stream {
                    reader: FrameReader::new(recv, HANDSHAKE_FRAME_LIMIT),
                    writer: FrameWriter::new(send),
                });
                // The declaration byte and the first frame in one write.
                let mut first = bytes::BytesMut::with_capacity(frame.len().saturating_add(1));
                first.extend_from_slice(&[channel.tag()]);
                first.extend_from_slice(&frame);
                stream.writer.write(first.freeze()).await
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::WriteError::ConnectionLost(e))) => Err(lost(e, step)),
        Ok(Err(e)) => Err(ConnectError::ServerViolation {
            reason: Reason::InvalidStream,
            message: format!("{channel}: {e}"),
        }),
        Err(_) => Err(ConnectError::TimedOut { step }),
    }
}
