//! Certificate lifecycle (issue 5, item 4): a node's certificate renewed with
//! `Ca::renew` and written over the old files is served on the next handshake, without a
//! restart, while peers stay connected and matches keep forming.

mod common;

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_stream::StreamExt;
use virfed::domain::SystemClock;
use virfed::kit::fixture::{FederationFiles, RunningRegion};
use virfed::pb::client as pb;
use virfed::pki::{client_config, Ca, CertSpec, TlsMaterial};

use common::req;

/// The certificate a fresh TLS handshake with `addr` is served.
async fn served_cert(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_served_without_restart_while_peers_stay_connected() {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), &["alpha", "beta"]).unwrap();
    let fed_ca = Ca::load(&files.ca_dir).unwrap();
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    for r in &regions {
        r.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    }
    let (alpha, beta) = (&regions[0], &regions[1]);
    let peer_addr = alpha.files.config.federation.as_ref().unwrap().listen;
    let as_beta = client_config(&TlsMaterial::from_issued(
        &fed_ca.cert_pem(),
        &fed_ca.issue(&CertSpec::node("beta", vec!["localhost".into()], 30)).unwrap(),
    ))
    .unwrap();
    let cert_path = alpha.files.dir.join("federation-node.pem");
    let key_path = alpha.files.dir.join("federation-node.key");
    let old = std::fs::read_to_string(&cert_path).unwrap();
    let old_der = CertificateDer::from_pem_slice(old.as_bytes()).unwrap().as_ref().to_vec();
    assert_eq!(served_cert(peer_addr, as_beta.clone()).await, old_der);

    // A match before the renewal.
    beta.org_client("jeugdzorg").await.unwrap().register_signal(req("111222333", "B One")).await.unwrap();
    alpha.org_client("jeugdzorg").await.unwrap().register_signal(req("111222333", "A One")).await.unwrap();

    // Renew the peer-port certificate and the client-API certificate in place.
    let renewed = fed_ca.renew(&old, 90).unwrap();
    replace(&key_path, &renewed.key_pem);
    replace(&cert_path, &renewed.cert_pem);
    let new_der = CertificateDer::from_pem_slice(renewed.cert_pem.as_bytes()).unwrap().as_ref().to_vec();
    let region_ca = Ca::load(&alpha.files.dir.join("ca")).unwrap();
    let api_cert = alpha.files.dir.join("node.pem");
    let api_old = std::fs::read_to_string(&api_cert).unwrap();
    let api_new = region_ca.renew(&api_old, 90).unwrap();
    replace(&alpha.files.dir.join("node.key"), &api_new.key_pem);
    replace(&api_cert, &api_new.cert_pem);
    let api_new_der = CertificateDer::from_pem_slice(api_new.cert_pem.as_bytes()).unwrap().as_ref().to_vec();
    let as_org =
        client_config(&alpha.files.client_material(virfed::pki::Identity::Organisation("jeugdzorg".into())).unwrap())
            .unwrap();

    let mut served = Vec::new();
    let mut api_served = Vec::new();
    for _ in 0..100 {
        served = served_cert(peer_addr, as_beta.clone()).await;
        api_served = served_cert(alpha.addr, as_org.clone()).await;
        if served == new_der && api_served == api_new_der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, new_der, "the peer port still serves the old certificate");
    assert_eq!(api_served, api_new_der, "the client port still serves the old certificate");

    // The peers stayed connected: a new cross-region match forms after the renewal.
    beta.org_client("jeugdzorg").await.unwrap().register_signal(req("123456782", "B Two")).await.unwrap();
    let mut alpha_client = alpha.org_client("jeugdzorg").await.unwrap();
    alpha_client.register_signal(req("123456782", "A Two")).await.unwrap();
    let mut watch = alpha_client.watch(pb::WatchRequest { after_cursor: 0 }).await.unwrap().into_inner();
    let mut names = Vec::new();
    while names.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
        names.push(n.counterparts[0].professional.as_ref().unwrap().name.clone());
    }
    assert_eq!(names, ["B One", "B Two"]);
    for r in regions {
        r.stop().await.unwrap();
    }
}
