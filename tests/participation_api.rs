//! The participation report through the admin API (issue 4, item 6): operators and the
//! municipality read it; other organisations may not; quiet organisations are flagged on
//! the injected clock; nothing about children is in it.

use std::sync::Arc;

use chrono::TimeZone;
use tonic::Code;
use virfed::domain::ManualClock;
use virfed::kit::fixture::{register_request, RunningRegion, MATCH_OFFICER_ORG};
use virfed::pb::admin::organisations_client::OrganisationsClient;
use virfed::pb::admin::ParticipationRequest;
use virfed::pki::Identity;

/// The professionals' e-mail: it must never appear in the participation report.
const SECRET_EMAIL: &str = "secret.person@example.nl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participation_flags_the_quiet_organisation_and_is_only_for_operators_and_the_municipality() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap());
    let region = RunningRegion::start(dir.path(), "rotterdam", Arc::new(clock.clone())).await.unwrap();
    for (id, domain) in [("school-a", "education"), ("school-b", "education"), (MATCH_OFFICER_ORG, "other")] {
        region.add_org(id, id, domain, None).await.unwrap();
    }
    let bsns = virfed::kit::fixture::valid_bsns(123_000_000, 3);
    region
        .org_client("school-a")
        .await
        .unwrap()
        .register_signal(register_request(&bsns[0], "Anna Canary", SECRET_EMAIL))
        .await
        .unwrap();
    region
        .org_client("school-b")
        .await
        .unwrap()
        .register_signal(register_request(&bsns[1], "Bert Canary", SECRET_EMAIL))
        .await
        .unwrap();
    clock.advance(chrono::Duration::days(200));
    region
        .org_client("school-a")
        .await
        .unwrap()
        .register_signal(register_request(&bsns[2], "Anna Canary", SECRET_EMAIL))
        .await
        .unwrap();

    let report = region
        .operator()
        .await
        .unwrap()
        .get_participation(ParticipationRequest { quiet_after_days: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.quiet_after_days, 182);
    let row = |id: &str| report.organisations.iter().find(|o| o.organisation_id == id).unwrap().clone();
    assert!(row("school-b").quiet, "school-b has been quiet for 200 days while school-a signals");
    assert!(!row("school-a").quiet);
    assert_eq!(row("school-a").signals_30d, 1);
    assert_eq!(row("school-a").signals_365d, 2);
    assert!(report.csv.lines().count() >= 4 && report.html.contains("<svg"));
    for text in [&report.csv, &report.html, &report.text] {
        for bsn in &bsns {
            assert!(!text.contains(bsn.as_str()), "a BSN in the participation report");
        }
        assert!(!text.contains("Canary") && !text.contains("secret.person"), "contact details in the report");
    }

    // The municipality may read it; another organisation may not.
    let officer =
        OrganisationsClient::new(region.channel(Identity::Organisation(MATCH_OFFICER_ORG.into())).await.unwrap());
    assert!(officer.clone().get_participation(ParticipationRequest { quiet_after_days: 90 }).await.is_ok());
    let school = OrganisationsClient::new(region.channel(Identity::Organisation("school-a".into())).await.unwrap());
    let err = school.clone().get_participation(ParticipationRequest { quiet_after_days: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("municipality"), "{}", err.message());
    region.stop().await.unwrap();
}

/// `curl` with a client certificate over the node's mutual TLS; returns (HTTP code, body).
fn curl(url: &str, ca: &std::path::Path, cert: Option<(&std::path::Path, &std::path::Path)>) -> (String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "--http2", "-w", "\n%{http_code}", "--cacert"]).arg(ca);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = cmd.arg(url).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participation_page_on_the_client_port_needs_an_operator_or_municipality_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let region = RunningRegion::start(dir.path(), "rotterdam", Arc::new(virfed::domain::SystemClock)).await.unwrap();
    region.add_org("school-a", "School <A>", "education", None).await.unwrap();
    region.add_org(MATCH_OFFICER_ORG, "Gemeente", "other", None).await.unwrap();
    let files = &region.files;
    let ca = files.dir.join("ca").join("ca.pem");
    let url = format!("https://localhost:{}/participation", region.addr.port());
    let (op_cert, op_key) = files.write_client("ops", Identity::Operator("ops".into())).unwrap();
    let (code, body) = curl(&url, &ca, Some((&op_cert, &op_key)));
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("<svg") && body.contains("School &lt;A&gt;"), "{body}");
    let (code, body) = curl(&format!("{url}.csv"), &ca, Some((&op_cert, &op_key)));
    assert_eq!(code, "200");
    assert!(body.starts_with("organisation_id") || body.lines().next().unwrap_or("").contains("domain"), "{body}");
    let (mo_cert, mo_key) = files.write_client("officer", Identity::Organisation(MATCH_OFFICER_ORG.into())).unwrap();
    assert_eq!(curl(&url, &ca, Some((&mo_cert, &mo_key))).0, "200");
    let (school_cert, school_key) = files.write_client("school", Identity::Organisation("school-a".into())).unwrap();
    let (code, body) = curl(&url, &ca, Some((&school_cert, &school_key)));
    assert_eq!(code, "403", "{body}");
    // Without a client certificate the TLS handshake itself fails: no HTTP status at all.
    assert_eq!(curl(&url, &ca, None).0, "000");
    region.stop().await.unwrap();
}
