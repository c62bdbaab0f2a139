//! `codec::decode_data_value` on arbitrary payloads, for realistic application types.
//!
//! The first input byte picks the type, the rest is the payload. Checks: no panic, no abort
//! (an allocation over libFuzzer's limit is a crash); a value that decodes re-encodes, with
//! `Payload::encode`, into at most as many bytes (the shortest varints), which decode again to
//! the same bytes (the same length for types holding a `HashMap`, whose order varies).
//!
//! Not covered, as documented on `decode_data_value`: sequences of zero-sized elements.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::protocol::codec::{Payload, decode_data_value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A game state snapshot, as a server sends on feed.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    tick: u64,
    time: f32,
    players: Vec<PlayerState>,
    events: Vec<Event>,
    map_name: Option<String>,
    checksum: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct PlayerState {
    id: u64,
    name: String,
    pos: (f32, f32, f32),
    velocity: [f32; 3],
    health: Option<u8>,
    team: Team,
    inventory: Vec<(u16, u32)>,
    flags: Vec<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Team {
    Red,
    Blue,
    Spectator,
}

#[derive(Debug, Serialize, Deserialize)]
enum Event {
    Joined {
        id: u64,
        name: String,
    },
    Left(u64),
    Chat {
        from: u64,
        text: String,
        channel: Option<String>,
    },
    Hit {
        by: u64,
        target: u64,
        damage: f32,
        critical: bool,
    },
    Spawned(u64, (f32, f32)),
    Tick,
}

/// A client's input and requests, as a client sends on main.
#[derive(Debug, Serialize, Deserialize)]
struct Command {
    seq: u32,
    buttons: u16,
    aim: (f32, f32),
    say: Option<String>,
    blob: Bytes,
    nested: Vec<Vec<u64>>,
    scores: HashMap<u64, i32>,
    tags: BTreeMap<String, Vec<i16>>,
    key: char,
    delta: i64,
    reply: Option<Box<Reply>>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ok,
    Err { code: u16, text: String },
    Value(Vec<Option<u64>>),
}

/// Decodes `payload` as `T`; if it decodes, checks the re-encoding (see the module comment).
fn check<T: Serialize + DeserializeOwned>(payload: &[u8], same_bytes: bool) {
    let Ok(value) = decode_data_value::<T>(payload) else {
        return;
    };
    let first = encode(&value);
    assert!(
        first.len() <= payload.len(),
        "{} re-encodes to {} bytes from {}",
        std::any::type_name::<T>(),
        first.len(),
        payload.len()
    );
    let again: T = decode_data_value(&first).expect("a re-encoded value decodes");
    let second = encode(&again);
    if same_bytes {
        assert_eq!(first, second, "re-encoding is stable");
    } else {
        assert_eq!(first.len(), second.len(), "re-encoding is stable");
    }
}

/// The payload bytes `Payload::encode` produces (the frame minus its header).
fn encode<T: Serialize>(value: &T) -> Bytes {
    let (_, payload) = Payload::encode(value)
        .expect("a decoded value encodes")
        .into_frame(0, usize::MAX)
        .expect("fits the largest frame");
    payload
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, payload)) = input.split_first() else {
        return;
    };
    match which % 8 {
        0 => check::<Snapshot>(payload, true),
        1 => check::<Command>(payload, false),
        2 => check::<Vec<Event>>(payload, true),
        3 => check::<String>(payload, true),
        4 => check::<Vec<String>>(payload, true),
        5 => check::<(u8, Bytes, Option<u64>, Vec<Vec<u8>>)>(payload, true),
        6 => check::<BTreeMap<u64, PlayerState>>(payload, true),
        _ => check::<(Team, Reply, Vec<(i32, f64)>)>(payload, true),
    }
});
