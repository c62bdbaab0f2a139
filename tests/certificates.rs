//! Trust on first use with a `known_hosts` file, and certificate rotation on a live server with
//! clients pinning a set of fingerprints.

mod common;

use common::{assert_echoes, within};
use quicfeed::{Client, ClientConfig, ConnectError, Fingerprint, KnownHosts, Trust};

/// Proves: the first connection records the server's fingerprint under `localhost@address` and
/// succeeds, and is listed by `newly_recorded`; the second is accepted against the record (the
/// file unchanged, nothing newly recorded, by that value or a fresh one); after the server
/// changes its certificate the connection is refused with both fingerprints in the error; and
/// once the line is removed the new certificate is recorded.
#[tokio::test]
async fn trust_on_first_use_records_accepts_then_refuses_a_changed_certificate() {
    let fixture = common::Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let known = KnownHosts::new(dir.path().join("known_hosts"));
    let config = ClientConfig::new(fixture.addr, Trust::KnownHosts(known.clone()));
    let host = format!("localhost@{}", fixture.addr);
    let original = Fingerprint::of(&fixture.certificate);

    let mut first = within(Client::connect(&config)).await.unwrap();
    assert_echoes(&mut first, 1).await;
    assert_eq!(known.entries().unwrap(), vec![(host.clone(), original)]);
    assert_eq!(known.newly_recorded(), vec![(host.clone(), original)]);
    let recorded = std::fs::read(known.path()).unwrap();

    let mut second = within(Client::connect(&config)).await.unwrap();
    assert_echoes(&mut second, 1).await;
    assert_eq!(std::fs::read(known.path()).unwrap(), recorded, "unchanged");
    assert_eq!(known.newly_recorded().len(), 1, "a known host is not new");
    let fresh = KnownHosts::new(known.path());
    let fresh_config = ClientConfig::new(fixture.addr, Trust::KnownHosts(fresh.clone()));
    let mut again = within(Client::connect(&fresh_config)).await.unwrap();
    assert_echoes(&mut again, 1).await;
    assert_eq!(fresh.newly_recorded(), vec![], "known from the file");

    let (replacement, _) = common::identity();
    let changed = replacement.fingerprint();
    fixture.server.rotate_identity(replacement).unwrap();
    let err = within(Client::connect(&config)).await.unwrap_err();
    let text = err.to_string();
    // Its own variant, in words a person can act on: both fingerprints, the file and what to
    // do, and no rustls Debug dump.
    assert!(matches!(err, ConnectError::Certificate { .. }), "{text}");
    assert!(text.contains(&original.to_string()), "{text}");
    assert!(text.contains(&changed.to_string()), "{text}");
    assert!(text.contains(&host), "{text}");
    assert!(text.contains(&known.path().display().to_string()), "{text}");
    assert!(text.contains("remove the line"), "{text}");
    assert!(!text.contains("OtherError"), "{text}");
    assert_eq!(known.get(&host).unwrap(), Some(original), "not overwritten");

    assert!(known.remove(&host).unwrap());
    let mut third = within(Client::connect(&config)).await.unwrap();
    assert_echoes(&mut third, 1).await;
    assert_eq!(known.get(&host).unwrap(), Some(changed));
    assert_eq!(
        known.newly_recorded().last(),
        Some(&(host.clone(), changed))
    );
}

/// Proves: a server rotates its certificate without a restart; clients pinning the old and the
/// new fingerprint connect before and after, a client pinning only the old one is refused
/// afterwards, and a session established before the rotation carries on.
#[tokio::test]
async fn a_rotated_certificate_is_accepted_by_clients_pinning_both() {
    let fixture = common::Fixture::start().await;
    let old = Fingerprint::of(&fixture.certificate);
    let (next_identity, _) = common::identity();
    let new = next_identity.fingerprint();
    let both = ClientConfig::new(fixture.addr, Trust::Fingerprints(vec![old, new]));
    let only_old = ClientConfig::new(fixture.addr, Trust::Fingerprint(old));

    let mut before = within(Client::connect(&both)).await.unwrap();
    assert_echoes(&mut before, 1).await;

    fixture.server.rotate_identity(next_identity).unwrap();
    assert_eq!(fixture.server.fingerprint(), new);

    let mut after = within(Client::connect(&both)).await.unwrap();
    assert_echoes(&mut after, 1).await;
    let err = within(Client::connect(&only_old)).await.unwrap_err();
    assert!(err.to_string().contains(&new.to_string()), "{err}");
    assert_echoes(&mut before, 2).await;

    let empty = ClientConfig::new(fixture.addr, Trust::Fingerprints(Vec::new()));
    assert!(within(Client::connect(&empty)).await.is_err());
}
