//! The participation report (issue 4, item 6): counts, last signal, matches, the quiet flag
//! with an injected `today`, the CSV/HTML/text renderings, and that it holds no child data.
//!
//! Most tests build audit entries directly (the report is a pure function of the organisation
//! list and the log); the last one reads a real node's store after signals made through the
//! client API under a manual clock.

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use tempfile::TempDir;

use virfed::domain::{Clock, Contact, ManualClock, OrgDomain, OrgId, Organisation};
use virfed::kit::fixture::valid_bsns;
use virfed::kit::fixture::{RunningRegion, MATCH_OFFICER_ORG};
use virfed::participation::{report, OrgParticipation, ParticipationConfig, ParticipationReport};
use virfed::pb::client as pb;
use virfed::store::AuditEntry;

// ---- helpers ------------------------------------------------------------------------------

/// The injected "today" of the pure tests.
fn today() -> NaiveDate {
    date(2026, 9, 15)
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn days_ago(n: i64) -> NaiveDate {
    today() - Duration::days(n)
}

/// 10:00 UTC on `d`: the same calendar date in Amsterdam.
fn at(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(10, 0, 0).unwrap())
}

fn org(id: &str, name: &str, domain: OrgDomain) -> Organisation {
    Organisation { id: OrgId::parse(id).unwrap(), name: name.into(), domain, coordinator: None }
}

/// An audit log under construction, numbering its entries.
#[derive(Default)]
struct Log(Vec<AuditEntry>);

impl Log {
    fn push(&mut self, at: DateTime<Utc>, actor: &str, action: &str, subject: &str, detail: &str) -> &mut Self {
        let seq = self.0.len() as u64 + 1;
        self.0.push(AuditEntry {
            seq,
            at,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            detail: detail.into(),
            prev: [0; 32],
        });
        self
    }

    fn added(&mut self, org: &str, on: NaiveDate) -> &mut Self {
        self.push(at(on), "operator:ops", "org.add", org, "youth-care")
    }

    fn signal(&mut self, org: &str, on: NaiveDate) -> &mut Self {
        let id = format!("signal-{}", self.0.len());
        self.push(at(on), &format!("org:{org}"), "signal.register", &id, "")
    }

    fn notice(&mut self, addressee: &str, org: &str, on: NaiveDate) -> &mut Self {
        let cursor = self.0.len();
        self.push(
            at(on),
            "system:matcher",
            "notice.match-created",
            "",
            &format!("to {addressee} of org:{org} (cursor {cursor})"),
        )
    }
}

fn build(orgs: &[Organisation], log: &Log) -> ParticipationReport {
    report(orgs, &log.0, today(), &ParticipationConfig::default())
}

fn row<'a>(r: &'a ParticipationReport, id: &str) -> &'a OrgParticipation {
    r.orgs.iter().find(|o| o.org.as_str() == id).unwrap_or_else(|| panic!("{id} in report"))
}

fn quiet_ids(r: &ParticipationReport) -> Vec<&str> {
    r.quiet_orgs().map(|o| o.org.as_str()).collect()
}

/// Two youth-care organisations registered long ago.
fn youth_care_pair() -> (Vec<Organisation>, Log) {
    let orgs = vec![org("a", "Jeugdzorg A", OrgDomain::YouthCare), org("b", "Jeugdzorg B", OrgDomain::YouthCare)];
    let mut log = Log::default();
    log.added("a", date(2024, 1, 1)).added("b", date(2024, 1, 1));
    (orgs, log)
}

// ---- counts ---------------------------------------------------------------------------------

#[test]
fn signals_are_counted_in_the_last_30_90_365_days_up_to_each_edge() {
    let orgs = vec![org("a", "A", OrgDomain::YouthCare)];
    let mut log = Log::default();
    log.added("a", date(2024, 1, 1));
    for n in [0, 29, 30, 89, 90, 364, 365, 400] {
        log.signal("a", days_ago(n));
    }
    let r = build(&orgs, &log);
    let a = row(&r, "a");
    assert_eq!((a.signals_30d, a.signals_90d, a.signals_365d), (2, 4, 6), "today..today-29, ..-89, ..-364");
    assert_eq!(a.last_signal, Some(today()));
}

#[test]
fn signal_dates_are_dutch_calendar_dates() {
    let orgs = vec![org("a", "A", OrgDomain::YouthCare)];
    let mut log = Log::default();
    // 22:30 UTC on the day 30 days ago is 00:30 the next day in Amsterdam (summer time):
    // 29 days ago, so inside the 30-day window.
    let late = Utc.from_utc_datetime(&days_ago(30).and_hms_opt(22, 30, 0).unwrap());
    log.push(late, "org:a", "signal.register", "s1", "");
    let r = build(&orgs, &log);
    assert_eq!(row(&r, "a").signals_30d, 1);
    assert_eq!(row(&r, "a").last_signal, Some(days_ago(29)));
}

#[test]
fn repeats_entries_after_today_and_unknown_orgs_are_not_signals() {
    let orgs = vec![org("a", "A", OrgDomain::YouthCare)];
    let mut log = Log::default();
    log.signal("a", days_ago(10));
    log.push(at(days_ago(5)), "org:a", "signal.register.repeat", "s1", "");
    log.signal("a", today() + Duration::days(1));
    log.signal("ghost", days_ago(1));
    log.push(at(days_ago(1)), "operator:ops", "signal.register", "s9", "");
    let r = build(&orgs, &log);
    assert_eq!(r.orgs.len(), 1);
    let a = row(&r, "a");
    assert_eq!((a.signals_30d, a.last_signal), (1, Some(days_ago(10))));
}

#[test]
fn last_signal_is_the_latest_even_beyond_a_year_and_none_when_never_signalled() {
    let orgs = vec![org("a", "A", OrgDomain::Health), org("b", "B", OrgDomain::Health)];
    let mut log = Log::default();
    log.signal("a", days_ago(900)).signal("a", days_ago(500)).signal("a", days_ago(700));
    let r = build(&orgs, &log);
    let a = row(&r, "a");
    assert_eq!((a.signals_365d, a.last_signal), (0, Some(days_ago(500))));
    assert_eq!(row(&r, "b").last_signal, None);
}

#[test]
fn matches_count_notices_to_the_organisations_professionals_only() {
    let orgs = vec![org("a", "A", OrgDomain::YouthCare), org("ab", "AB", OrgDomain::Education)];
    let mut log = Log::default();
    log.notice("professional", "a", days_ago(400))
        .notice("professional", "a", days_ago(3))
        .notice("coordinator", "a", days_ago(3))
        .notice("match officer", "a", days_ago(3))
        .notice("professional", "ab", days_ago(3));
    log.push(at(days_ago(2)), "system:matcher", "notice.match-ended", "", "to professional of org:a (cursor 9)");
    log.push(at(days_ago(2)), "system:matcher", "federation.match", "region x", "pair matched");
    let r = build(&orgs, &log);
    assert_eq!(row(&r, "a").matches, 2, "one per match per professional, however old; not a/ab prefix confusion");
    assert_eq!(row(&r, "ab").matches, 1);
}

#[test]
fn family_matches_are_counted_per_organisation_apart_from_child_matches() {
    let orgs = vec![org("a", "A", OrgDomain::YouthCare), org("b", "B", OrgDomain::Education)];
    let mut log = Log::default();
    log.notice("professional", "a", days_ago(3));
    for (who, org) in [("professional", "a"), ("professional", "a"), ("coordinator", "a"), ("professional", "b")] {
        log.push(
            at(days_ago(1)),
            "system:matcher",
            "notice.family-match-created",
            "",
            &format!("to {who} of org:{org} (cursor 1)"),
        );
    }
    log.push(at(days_ago(1)), "system:matcher", "notice.family-match-ended", "", "to professional of org:b (cursor 2)");
    let r = build(&orgs, &log);
    assert_eq!((row(&r, "a").matches, row(&r, "a").family_matches), (1, 2));
    assert_eq!((row(&r, "b").matches, row(&r, "b").family_matches), (0, 1));
    assert!(r.to_csv().contains("\r\na,A,youth-care,0,0,0,,1,false,2\r\n"), "{}", r.to_csv());
}

// ---- the quiet flag -------------------------------------------------------------------------

#[test]
fn quiet_flag_set_for_the_quiet_org_when_a_same_domain_org_is_active() {
    let (orgs, mut log) = youth_care_pair();
    log.signal("a", days_ago(10)).signal("b", days_ago(200));
    let r = build(&orgs, &log);
    assert_eq!(quiet_ids(&r), ["b"]);
    assert!(!row(&r, "a").quiet);
}

#[test]
fn quiet_flag_not_set_when_the_whole_domain_is_quiet() {
    let (mut orgs, mut log) = youth_care_pair();
    orgs.push(org("school", "School", OrgDomain::Education));
    log.signal("a", days_ago(300)).signal("b", days_ago(200));
    // An active organisation of another domain does not make youth care "quiet".
    log.signal("school", days_ago(1));
    let r = build(&orgs, &log);
    assert!(quiet_ids(&r).is_empty(), "{:?}", quiet_ids(&r));
}

#[test]
fn quiet_flag_not_set_before_the_period_ends_on_the_edge_day() {
    let (orgs, mut log) = youth_care_pair();
    log.signal("a", today()).signal("b", days_ago(182));
    assert!(quiet_ids(&build(&orgs, &log)).is_empty(), "exactly 182 days is not longer than the period");

    let (orgs, mut log) = youth_care_pair();
    log.signal("a", today()).signal("b", days_ago(183));
    assert_eq!(quiet_ids(&build(&orgs, &log)), ["b"]);

    // The other side of the edge: an organisation that signalled exactly 182 days ago still
    // counts as active for its peers.
    let (orgs, mut log) = youth_care_pair();
    log.signal("a", days_ago(182)).signal("b", days_ago(183));
    assert_eq!(quiet_ids(&build(&orgs, &log)), ["b"]);
}

#[test]
fn quiet_period_is_configurable() {
    let (orgs, mut log) = youth_care_pair();
    log.signal("a", days_ago(1)).signal("b", days_ago(31));
    assert!(quiet_ids(&build(&orgs, &log)).is_empty(), "default period is 182 days");
    let month = ParticipationConfig { quiet_after_days: 30 };
    let r = report(&orgs, &log.0, today(), &month);
    assert_eq!(quiet_ids(&r), ["b"]);
    assert_eq!(r.quiet_after_days, 30);
    assert_eq!(ParticipationConfig::default().quiet_after_days, 182);
}

#[test]
fn never_signalled_org_uses_its_org_add_date() {
    let orgs = vec![
        org("active", "Active", OrgDomain::YouthCare),
        org("old", "Registered long ago", OrgDomain::YouthCare),
        org("new", "Registered recently", OrgDomain::YouthCare),
    ];
    let mut log = Log::default();
    log.added("active", date(2024, 1, 1)).added("old", days_ago(183)).added("new", days_ago(182));
    log.signal("active", days_ago(5));
    let r = build(&orgs, &log);
    assert_eq!(quiet_ids(&r), ["old"]);
    assert_eq!(row(&r, "old").last_signal, None);

    // A recently registered organisation that never signalled is not active: it does not
    // make an older quiet peer "quiet while others are not".
    let orgs = vec![org("old", "Old", OrgDomain::Health), org("new", "New", OrgDomain::Health)];
    let mut log = Log::default();
    log.added("old", days_ago(400)).added("new", days_ago(2));
    assert!(quiet_ids(&build(&orgs, &log)).is_empty());
}

// ---- per-domain totals ----------------------------------------------------------------------

#[test]
fn domain_totals_cover_the_last_twelve_months_per_registered_domain() {
    let orgs = vec![
        org("a", "A", OrgDomain::YouthCare),
        org("b", "B", OrgDomain::YouthCare),
        org("school", "School", OrgDomain::Education),
    ];
    let mut log = Log::default();
    log.signal("a", date(2026, 9, 1)).signal("b", date(2026, 9, 14)).signal("a", date(2025, 10, 31));
    log.signal("a", date(2025, 9, 30)); // 13 months back: outside the chart
    log.signal("school", date(2026, 1, 5));
    let r = build(&orgs, &log);
    let domains: Vec<OrgDomain> = r.domains.iter().map(|d| d.domain).collect();
    assert_eq!(domains, [OrgDomain::YouthCare, OrgDomain::Education]);
    let youth = &r.domains[0].per_month;
    assert_eq!(youth.len(), 12);
    assert_eq!(youth[0], ("2025-10".to_string(), 1));
    assert_eq!(youth[11], ("2026-09".to_string(), 2));
    assert_eq!(youth.iter().map(|(_, n)| n).sum::<u64>(), 3);
    let school = &r.domains[1].per_month;
    assert_eq!(school.iter().find(|(m, _)| m == "2026-01").unwrap().1, 1);
}

// ---- renderings -----------------------------------------------------------------------------

#[test]
fn csv_has_a_header_and_one_row_per_org_with_commas_and_quotes_escaped() {
    let orgs = vec![
        org("brug", "Zorg, \"De Brug\"", OrgDomain::YouthCare),
        org("plain", "Plain", OrgDomain::YouthCare),
        org("formula", "=HYPERLINK(\"x\")", OrgDomain::Health),
    ];
    let mut log = Log::default();
    log.signal("plain", days_ago(3)).signal("brug", days_ago(300)).added("brug", date(2024, 1, 1));
    let csv = build(&orgs, &log).to_csv();
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(
        lines[0],
        "organisation,name,domain,signals_30d,signals_90d,signals_365d,last_signal,matches,quiet,family_matches"
    );
    assert!(lines.contains(&"brug,\"Zorg, \"\"De Brug\"\"\",youth-care,0,0,1,2025-11-19,0,true,0"), "{csv}");
    assert!(lines.contains(&"plain,Plain,youth-care,1,1,1,2026-09-12,0,false,0"), "{csv}");
    assert!(lines.contains(&"formula,\"'=HYPERLINK(\"\"x\"\")\",health,0,0,0,,0,false,0"), "{csv}");
}

#[test]
fn html_escapes_script_in_an_org_name_and_contains_an_svg_chart() {
    let orgs = vec![org("evil", "<script>alert('x')</script> & Co", OrgDomain::YouthCare)];
    let mut log = Log::default();
    log.signal("evil", days_ago(3));
    let html = build(&orgs, &log).to_html();
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Co"), "{html}");
    assert!(html.contains("<svg"));
    assert!(html.contains("<polyline"));
    assert!(html.starts_with("<!DOCTYPE html>"));
    for external in ["http://", "https://", "src=", "href="] {
        let outside_svg_namespace = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!outside_svg_namespace.contains(external), "external reference {external:?}");
    }
}

#[test]
fn text_rendering_lists_orgs_and_names_the_quiet_ones() {
    let (orgs, mut log) = youth_care_pair();
    log.signal("a", days_ago(10)).signal("b", days_ago(200));
    let text = build(&orgs, &log).render_text();
    assert!(text.contains("Jeugdzorg A") && text.contains("Jeugdzorg B"), "{text}");
    assert!(text.contains("1 quiet organisation(s):\n  b (Jeugdzorg B, youth-care): last signal 2026-02-27"), "{text}");
    assert!(text.contains("2026-09"), "{text}");
}

#[test]
fn report_leaks_no_canaries_from_unrelated_audit_fields_or_contacts() {
    const CANARY: &str = "CANARY";
    let coordinator = Contact {
        name: "CANARY Coordinator".into(),
        role: "CANARY role".into(),
        phone: "+31 6 99999999".into(),
        email: "canary@leak.example".into(),
    };
    let mut orgs = vec![org("a", "A", OrgDomain::YouthCare), org("b", "B", OrgDomain::YouthCare)];
    orgs[0].coordinator = Some(coordinator);
    let mut log = Log::default();
    log.push(at(days_ago(400)), "operator:CANARY-operator", "org.add", "a", "CANARY-domain-detail");
    log.push(at(days_ago(10)), "org:a", "signal.register", "CANARY-signal-id", "CANARY-register-detail");
    log.push(at(days_ago(9)), "org:b", "signal.register", "CANARY-signal-2", "");
    log.push(
        at(days_ago(9)),
        "system:matcher",
        "notice.match-created",
        "CANARY-own-signal",
        "to professional of org:a (cursor 7) CANARY-notice-detail",
    );
    log.push(at(days_ago(8)), "system:matcher", "federation.match", "region CANARY-region", "CANARY pair matched");
    log.push(at(days_ago(7)), "org:CANARY-ghost", "signal.register", "CANARY-ghost-signal", "");
    log.push(at(days_ago(6)), "org:a", "signal.withdraw.made-in-error", "CANARY-withdrawn", "CANARY reason");
    let r = build(&orgs, &log);
    assert_eq!(row(&r, "a").matches, 1, "the notice still counts");
    let json = serde_json::to_string(&r).unwrap();
    for (what, text) in [
        ("csv", r.to_csv()),
        ("html", r.to_html()),
        ("text", r.render_text()),
        ("json", json),
        ("debug", format!("{r:?}")),
    ] {
        assert!(!text.to_uppercase().contains(CANARY), "{what} leaks a canary:\n{text}");
        assert!(!text.contains("99999999"), "{what} leaks a phone number");
    }
}

// ---- against a real node --------------------------------------------------------------------

#[tokio::test]
async fn real_node_flags_exactly_the_org_quiet_for_200_days_while_its_peer_signals() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 10, 10, 0, 0).unwrap());
    let region = RunningRegion::start(&dir.path().join("r"), "r", Arc::new(clock.clone())).await.unwrap();
    region.add_org(MATCH_OFFICER_ORG, "Gemeente R", "other", None).await.unwrap();
    for id in ["jeugdzorg-a", "jeugdzorg-b"] {
        region.add_org(id, &format!("Jeugdzorg {id}"), "youth-care", None).await.unwrap();
    }
    let bsns = valid_bsns(100_000_000, 2);
    let register = |org: &'static str, bsn: String| {
        let region = &region;
        async move {
            let mut client = region.org_client(org).await.unwrap();
            let professional = pb::Contact {
                name: format!("Professional {org}"),
                role: "jeugdconsulent".into(),
                phone: "+31 10 555 0101".into(),
                email: format!("pro@{org}.example"),
            };
            let request = pb::RegisterSignalRequest {
                bsn,
                date_of_birth: "2014-05-01".into(),
                professional: Some(professional),
                removal_date: String::new(),
                parent_bsns: vec![],
            };
            assert!(client.register_signal(request).await.unwrap().into_inner().created);
        }
    };
    // Both organisations signal the same child: one match each.
    register("jeugdzorg-a", bsns[0].clone()).await;
    register("jeugdzorg-b", bsns[0].clone()).await;
    clock.advance(Duration::days(200));
    register("jeugdzorg-a", bsns[1].clone()).await;

    let store = region.handle.store();
    let r = report(&store.orgs().unwrap(), &store.audit_entries().unwrap(), clock.today(), &Default::default());
    assert_eq!(quiet_ids(&r), ["jeugdzorg-b"]);
    let (a, b) = (row(&r, "jeugdzorg-a"), row(&r, "jeugdzorg-b"));
    assert_eq!((a.signals_30d, a.signals_365d, a.last_signal, a.matches), (1, 2, Some(clock.today()), 1));
    assert_eq!((b.signals_30d, b.signals_365d, b.last_signal, b.matches), (0, 1, Some(date(2026, 3, 10)), 1));
    assert!(!row(&r, MATCH_OFFICER_ORG).quiet, "alone in its domain");
    region.stop().await.unwrap();
}
