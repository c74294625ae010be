//! Issue 9, "stolen organisation certificates are contained": a registration rate limit
//! per organisation on `RegisterSignal`, and a maximum connection age on the client API
//! port whose `Watch` streams end with a status the client resumes from by cursor.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tonic::Code;

use virfed::config::Config;
use virfed::domain::{AuditAction, Clock, ManualClock, OrgId, SystemClock};
use virfed::kit::fixture::{valid_bsns, RegionFiles, RunningRegion};
use virfed::pb::client as pb;

use common::req;

/// A region whose config has top-level keys `top` prepended and tables `tables` (TOML)
/// appended, with organisations jeugdzorg and school.
async fn region_with(dir: &Path, top: &str, tables: &str, clock: Arc<dyn Clock>) -> RunningRegion {
    let mut files = RegionFiles::create(dir, "rotterdam", SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let text = format!("{top}\n{}\n{tables}\n", std::fs::read_to_string(&files.config_path).unwrap());
    std::fs::write(&files.config_path, &text).unwrap();
    files.config = Config::parse(&text).unwrap();
    let region = RunningRegion::start_with(files, clock).await.unwrap();
    region.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    region.add_org("school", "School", "education", None).await.unwrap();
    region
}

fn rate_limited_entries(region: &RunningRegion) -> Vec<virfed::store::AuditEntry> {
    let entries = region.handle.store().audit_entries().unwrap();
    entries.into_iter().filter(|e| e.action == AuditAction::SignalRegisterRateLimited.as_str()).collect()
}

async fn metrics(region: &RunningRegion) -> String {
    virfed::health::http::get_text(region.handle.http_addr(), "/metrics").await.unwrap().1
}

fn org_signals(region: &RunningRegion, org: &str) -> usize {
    region.handle.store().org_signal_ids(&OrgId::parse(org).unwrap()).unwrap().len()
}

#[tokio::test]
async fn invariant_9_a_registration_flood_from_one_organisation_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap());
    let region =
        region_with(dir.path(), "", "[registration_limits]\nburst = 3\nper_hour = 1\n", Arc::new(clock.clone())).await;
    let bsns = valid_bsns(141_000_000, 8);
    let mut flood = region.org_client("jeugdzorg").await.unwrap();
    for bsn in &bsns[..3] {
        flood.register_signal(req(bsn, "A. de Vries")).await.expect("within the burst");
    }
    let refused = flood.register_signal(req(&bsns[3], "A. de Vries")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let message = refused.message();
    for part in ["organisation jeugdzorg", "registration limit", "nothing was registered", "Wait and retry", "operator"]
    {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    assert!(!message.contains(&bsns[3]), "the message never names the BSN: {message}");
    // Nothing changed: three signals, none for the refused child.
    assert_eq!(org_signals(&region, "jeugdzorg"), 3);
    assert_eq!(region.handle.store().signals().count(), 3);

    // Audited once, with the organisation as actor and subject; no BSN in the entry.
    let entries = rate_limited_entries(&region);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((entries[0].actor.as_str(), entries[0].subject.as_str()), ("org:jeugdzorg", "jeugdzorg"));
    assert!(entries[0].detail.contains("1 registration(s) refused"), "{}", entries[0].detail);
    assert!(entries.iter().all(|e| !e.detail.contains(&bsns[3])));

    // A repeat registration (D2) counts as a request too, and the flood goes on being
    // refused; the refusals within a minute share the next audit entry, not one each.
    let repeat = flood.register_signal(req(&bsns[0], "A. de Vries")).await.unwrap_err();
    assert_eq!(repeat.code(), Code::ResourceExhausted);
    assert_eq!(rate_limited_entries(&region).len(), 1, "coalesced within a minute");

    // Counted per organisation on /metrics; other registered organisations show 0.
    let text = metrics(&region).await;
    assert!(text.contains("virfed_registrations_rate_limited_total{org=\"jeugdzorg\"} 2"), "{text}");
    assert!(text.contains("virfed_registrations_rate_limited_total{org=\"school\"} 0"), "{text}");
    assert!(!text.contains(&bsns[3]));

    // Another organisation is unaffected: its own full bucket.
    let mut school = region.org_client("school").await.unwrap();
    for bsn in &bsns[4..7] {
        school.register_signal(req(bsn, "B. Jansen")).await.expect("school has its own bucket");
    }
    assert_eq!(org_signals(&region, "school"), 3);

    // The bucket refills at its rate: an hour later one more, then refused again, and the
    // refusals since the last entry are in a new one.
    clock.advance(chrono::Duration::hours(1));
    flood.register_signal(req(&bsns[3], "A. de Vries")).await.expect("one refilled");
    let again = flood.register_signal(req(&bsns[7], "A. de Vries")).await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert_eq!(org_signals(&region, "jeugdzorg"), 4);
    let entries = rate_limited_entries(&region);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[1].detail.contains("2 registration(s) refused"), "{}", entries[1].detail);
    assert!(metrics(&region).await.contains("virfed_registrations_rate_limited_total{org=\"jeugdzorg\"} 3"));
    region.stop().await.unwrap();
}

#[tokio::test]
async fn a_per_organisation_override_applies() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[registration_limits]\nburst = 2\nper_hour = 1\n\n[[registration_limits.overrides]]\norg = \"school\"\nburst = 5\nper_hour = 1\n";
    let region = region_with(dir.path(), "", extra, Arc::new(SystemClock)).await;
    let bsns = valid_bsns(142_000_000, 9);
    let mut jeugdzorg = region.org_client("jeugdzorg").await.unwrap();
    for bsn in &bsns[..2] {
        jeugdzorg.register_signal(req(bsn, "A. de Vries")).await.unwrap();
    }
    let refused = jeugdzorg.register_signal(req(&bsns[2], "A. de Vries")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("(2 at once, 1 more per hour)"), "{}", refused.message());

    let mut school = region.org_client("school").await.unwrap();
    for bsn in &bsns[3..8] {
        school.register_signal(req(bsn, "B. Jansen")).await.expect("the override's burst of 5");
    }
    let refused = school.register_signal(req(&bsns[8], "B. Jansen")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("organisation school"), "{}", refused.message());
    assert!(refused.message().contains("(5 at once, 1 more per hour)"), "{}", refused.message());
    assert_eq!((org_signals(&region, "jeugdzorg"), org_signals(&region, "school")), (2, 5));
    region.stop().await.unwrap();
}

#[test]
fn registration_limits_and_connection_age_parse_with_defaults_and_bad_values_are_refused() {
    let sample = include_str!("../deploy/node.example.toml");
    let config = Config::parse(sample).unwrap();
    let limits = &config.registration_limits;
    assert_eq!((limits.burst, limits.per_hour, limits.overrides.len()), (200, 100, 0), "the sample shows the defaults");
    assert_eq!(config.client_max_connection_age_secs, 300);

    // Left out entirely: the same defaults.
    let bare: String = sample
        .lines()
        .filter(|l| {
            !l.starts_with("burst") && !l.starts_with("per_hour") && !l.starts_with("client_max_connection_age")
        })
        .map(|l| if l == "[registration_limits]" { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!bare.contains("[registration_limits]"));
    let config = Config::parse(&bare).unwrap();
    assert_eq!((config.registration_limits.burst, config.registration_limits.per_hour), (200, 100));
    assert_eq!(config.client_max_connection_age_secs, 300);

    let with = |extra: &str| Config::parse(&format!("{sample}\n{extra}\n"));
    let config =
        with("[[registration_limits.overrides]]\norg = \"jeugdzorg-rijnmond\"\nburst = 1000\nper_hour = 400\n")
            .unwrap();
    let org = OrgId::parse("jeugdzorg-rijnmond").unwrap();
    assert_eq!(config.registration_limits.for_org(&org), (1000, 400));
    assert_eq!(config.registration_limits.for_org(&OrgId::parse("school").unwrap()), (200, 100));

    let err = with("[[registration_limits.overrides]]\norg = \"Not An Org\"\nburst = 10\nper_hour = 1\n").unwrap_err();
    assert!(err.contains("registration_limits.overrides.org"), "{err}");
    let err = with("[[registration_limits.overrides]]\norg = \"school\"\nburst = 0\nper_hour = 1\n").unwrap_err();
    assert!(err.contains("registration_limits.overrides (school)") && err.contains("at least 1"), "{err}");
    let twice = "[[registration_limits.overrides]]\norg = \"school\"\nburst = 5\nper_hour = 1\n";
    let err = with(&format!("{twice}\n{twice}")).unwrap_err();
    assert!(err.contains("school is listed twice"), "{err}");
    let err =
        with("[[registration_limits.overrides]]\norg = \"school\"\nburst = 5\nper_hour = 1\nrate = 3\n").unwrap_err();
    assert!(err.contains("rate"), "{err}");
    let zero = sample.replace("per_hour = 100", "per_hour = 0");
    assert_ne!(zero, sample);
    assert!(Config::parse(&zero).unwrap_err().contains("registration_limits: burst and per_hour must be at least 1"));
    let age = sample.replace("client_max_connection_age_secs = 300", "client_max_connection_age_secs = 0");
    assert!(Config::parse(&age).unwrap_err().contains("client_max_connection_age_secs"));
}

#[tokio::test]
async fn a_watch_ended_by_the_connection_age_ends_unavailable_and_resumes_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let region = region_with(dir.path(), "client_max_connection_age_secs = 1", "", Arc::new(SystemClock)).await;
    assert_eq!(region.files.config.client_max_connection_age_secs, 1);
    let bsns = valid_bsns(143_000_000, 2);
    let matched = |bsn: String| {
        let region = &region;
        async move {
            region.org_client("jeugdzorg").await.unwrap().register_signal(req(&bsn, "A. de Vries")).await.unwrap();
            region.org_client("school").await.unwrap().register_signal(req(&bsn, "B. Jansen")).await.unwrap();
        }
    };
    matched(bsns[0].clone()).await;
    let mut stream = region
        .org_client("jeugdzorg")
        .await
        .unwrap()
        .watch(pb::WatchRequest { after_cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends at the connection age")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("reconnect with your last cursor"), "{ended:?}");

    // Resumed by cursor: no double, and the next notice arrives.
    let mut resumed = region
        .org_client("jeugdzorg")
        .await
        .unwrap()
        .watch(pb::WatchRequest { after_cursor: first.cursor })
        .await
        .unwrap()
        .into_inner();
    matched(bsns[1].clone()).await;
    let next = tokio::time::timeout(Duration::from_secs(5), resumed.message()).await.unwrap().unwrap().unwrap();
    assert!(next.cursor > first.cursor, "{} after {}", next.cursor, first.cursor);
    region.stop().await.unwrap();
}
