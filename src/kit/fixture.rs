//! A real region on loopback: a fresh CA, certificates and config written to a directory,
//! and a node started in this process (or by the caller as a child process). The demo,
//! the benchmark and the integration tests all use it, so they exercise the same real
//! TLS, sockets and sled files an operator runs. Also the small builders they share:
//! valid test BSNs, a plausible contact, a registration request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::config::Config;
use crate::domain::{Clock, Contact};
use crate::pb::admin as admin_pb;
use crate::pb::admin::organisations_client::OrganisationsClient;
use crate::pb::client as pb;
use crate::pb::client::signals_client::SignalsClient;
use crate::pki::{client_config, connect, write_cert_pair, Ca, CertSpec, Identity, TlsMaterial};
use crate::server::{Node, NodeError, NodeHandle};

use super::{fail, KitError, KitResult};

/// The match officer organisation every fixture region configures.
pub const MATCH_OFFICER_ORG: &str = "gemeente";

/// A region's files: CA, node certificate, config.
pub struct RegionFiles {
    pub dir: PathBuf,
    pub ca: Ca,
    pub config: Config,
    pub config_path: PathBuf,
}

impl RegionFiles {
    /// Writes a CA, a server certificate for localhost/127.0.0.1 and a node config under
    /// `dir`, listening on `listen` (use port 0 for in-process nodes).
    pub fn create(dir: &Path, region: &str, listen: SocketAddr) -> KitResult<RegionFiles> {
        std::fs::create_dir_all(dir)?;
        let ca_dir = dir.join("ca");
        let ca = Ca::init(&ca_dir, &format!("virfed {region} region CA"), 3650)?;
        let server = ca.issue(&CertSpec::server(vec!["localhost".into(), "127.0.0.1".into()], 365))?;
        write_cert_pair(dir, "node", &server, false)?;
        let text = format!(
            "region = {region:?}\ndata_dir = {data:?}\nkeys_dir = {keys:?}\nlisten = \"{listen}\"\nhttp_listen = \"127.0.0.1:0\"\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[match_officer]\norg = \"{MATCH_OFFICER_ORG}\"\n",
            data = dir.join("data"),
            // The key files apart from the data, as a production node should have them.
            keys = dir.join("keys"),
            ca = ca_dir.join("ca.pem"),
            cert = dir.join("node.pem"),
            key = dir.join("node.key"),
        );
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, &text)?;
        let config = Config::parse(&text).map_err(KitError::Failed)?;
        Ok(RegionFiles { dir: dir.to_owned(), ca, config, config_path })
    }

    /// TLS material for a client with `identity`, issued by this region's CA.
    pub fn client_material(&self, identity: Identity) -> KitResult<TlsMaterial> {
        let issued = self.ca.issue(&CertSpec::client(identity, 30))?;
        Ok(TlsMaterial::from_issued(&self.ca.cert_pem(), &issued))
    }

    /// Writes a client certificate pair `<stem>.pem`/`<stem>.key` under the region dir.
    pub fn write_client(&self, stem: &str, identity: Identity) -> KitResult<(PathBuf, PathBuf)> {
        let issued = self.ca.issue(&CertSpec::client(identity, 30))?;
        Ok(write_cert_pair(&self.dir, stem, &issued, true)?)
    }
}

/// A free loopback port for configs that must name their port. Chosen below Linux's
/// ephemeral range (32768-60999), so no outgoing connection (a peer dialling a node that
/// is down) can take it between this check and a node's (re)start.
pub fn free_port() -> KitResult<u16> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    fail!("no free port found between 20000 and 32000")
}

/// A federation's files: one federation CA and, per region, the region's own files with
/// a node certificate from the federation CA and a `[federation]` section naming the
/// other regions as peers. Ports are fixed up front so every config can name its peers.
pub struct FederationFiles {
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_dir: PathBuf,
    pub regions: Vec<RegionFiles>,
}

impl FederationFiles {
    /// Every region a peer of every other.
    pub fn create(dir: &Path, regions: &[&str]) -> KitResult<FederationFiles> {
        Self::create_with(dir, regions, |_, _| true)
    }

    /// Every region a peer of `hub` only (and the hub of all).
    pub fn create_star(dir: &Path, regions: &[&str], hub: &str) -> KitResult<FederationFiles> {
        Self::create_with(dir, regions, |a, b| a == hub || b == hub)
    }

    /// `peers(a, b)` says whether region `a` lists `b` as a peer.
    pub fn create_with(dir: &Path, regions: &[&str], peers: impl Fn(&str, &str) -> bool) -> KitResult<FederationFiles> {
        let ca_dir = dir.join("federation-ca");
        let ca = Ca::init(&ca_dir, "virfed federation root (test)", 3650)?;
        Ca::publish_crl(&ca_dir, 30)?;
        let mut taken = std::collections::HashSet::new();
        let mut pick = || -> KitResult<u16> {
            loop {
                let port = free_port()?;
                if taken.insert(port) {
                    return Ok(port);
                }
            }
        };
        let mut ports = Vec::new();
        for _ in regions {
            ports.push((pick()?, pick()?));
        }
        let mut files = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            let region_dir = dir.join(region);
            let api = SocketAddr::from(([127, 0, 0, 1], ports[i].0));
            let mut region_files = RegionFiles::create(&region_dir, region, api)?;
            let node = ca.issue(&CertSpec::node(region, vec!["localhost".into(), "127.0.0.1".into()], 365))?;
            write_cert_pair(&region_dir, "federation-node", &node, false)?;
            // The CA's permission to publish in bulk (joins, re-keys, restores), as the
            // federation's operators issue it for a region that joins.
            let ticket = region_dir.join("resync-ticket.pem");
            std::fs::write(&ticket, ca.issue_resync_ticket(region, FIXTURE_TICKET_CHILDREN, 30)?)?;
            let mut text = std::fs::read_to_string(&region_files.config_path)?;
            text.push_str(&format!(
                "\n[federation]\nlisten = \"127.0.0.1:{}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\ncrls = [{:?}]\nresync_ticket = {:?}\n",
                ports[i].1,
                ca_dir.join("ca.pem"),
                region_dir.join("federation-node.pem"),
                region_dir.join("federation-node.key"),
                ca_dir.join(crate::pki::CRL_FILE),
                ticket,
            ));
            for (j, other) in regions.iter().enumerate() {
                if i != j && peers(region, other) {
                    text.push_str(&format!(
                        "\n[[federation.peers]]\nregion = {other:?}\naddress = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\n",
                        ports[j].1
                    ));
                }
            }
            std::fs::write(&region_files.config_path, &text)?;
            region_files.config = Config::parse(&text).map_err(KitError::Failed)?;
            files.push(region_files);
        }
        Ok(FederationFiles { dir: dir.to_owned(), ca, ca_dir, regions: files })
    }
}

/// Children each fixture region's resync ticket allows (at each peer).
pub const FIXTURE_TICKET_CHILDREN: u64 = 1_000_000;

/// A node running in this process on real sockets.
pub struct RunningRegion {
    pub files: RegionFiles,
    pub addr: SocketAddr,
    pub handle: NodeHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl RunningRegion {
    /// Starts every region of a federation in this process.
    pub async fn start_federation(files: FederationFiles, clock: Arc<dyn Clock>) -> KitResult<Vec<RunningRegion>> {
        // Bind every node first, so no node dials a peer that is not listening yet.
        let mut bound = Vec::new();
        for region in files.regions {
            let node = Node::bind(region.config.clone(), clock.clone()).await?;
            bound.push((region, node));
        }
        Ok(bound.into_iter().map(|(files, node)| Self::run_bound(files, node)).collect())
    }

    /// Creates the region's files under `dir` and starts its node on 127.0.0.1:0.
    pub async fn start(dir: &Path, region: &str, clock: Arc<dyn Clock>) -> KitResult<RunningRegion> {
        let files = RegionFiles::create(dir, region, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Self::start_with(files, clock).await
    }

    /// Starts a node from existing files (e.g. again after [`RunningRegion::stop`]).
    pub async fn start_with(files: RegionFiles, clock: Arc<dyn Clock>) -> KitResult<RunningRegion> {
        let node = Node::bind(files.config.clone(), clock).await?;
        Ok(Self::run_bound(files, node))
    }

    fn run_bound(files: RegionFiles, node: Node) -> RunningRegion {
        let addr = node.addr();
        let handle = node.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        RunningRegion { files, addr, handle, stop: Some(stop), task: Some(task) }
    }

    /// An mTLS channel to the node as `identity`.
    pub async fn channel(&self, identity: Identity) -> KitResult<Channel> {
        let config = client_config(&self.files.client_material(identity)?)?;
        Ok(connect(&self.addr.to_string(), "localhost", config).await?)
    }

    /// The client API as organisation `org`.
    pub async fn org_client(&self, org: &str) -> KitResult<SignalsClient<Channel>> {
        Ok(SignalsClient::new(self.channel(Identity::Organisation(org.into())).await?))
    }

    /// The admin API as an operator.
    pub async fn operator(&self) -> KitResult<OrganisationsClient<Channel>> {
        Ok(OrganisationsClient::new(self.channel(Identity::Operator("ops".into())).await?))
    }

    /// Registers an organisation through the admin API.
    pub async fn add_org(&self, id: &str, name: &str, domain: &str, coordinator: Option<Contact>) -> KitResult<()> {
        let coordinator =
            coordinator.map(|c| admin_pb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email });
        self.operator()
            .await?
            .add_organisation(admin_pb::Organisation {
                id: id.into(),
                name: name.into(),
                domain: domain.into(),
                coordinator,
            })
            .await
            .map_err(|e| KitError::context(format!("adding organisation {id}"), e))?;
        Ok(())
    }

    /// Stops the node (drains, flushes) and returns its files for a restart.
    pub async fn stop(mut self) -> KitResult<RegionFiles> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(self.files)
    }
}

/// A plausible contact for demos and tests.
pub fn contact(name: &str, role: &str, email: &str) -> Contact {
    Contact { name: name.into(), role: role.into(), phone: "+31 10 555 0100".into(), email: email.into() }
}

/// The first `n` valid BSNs at or after `start` (11-proef), as 9-digit strings.
pub fn valid_bsns(start: u32, n: usize) -> Vec<String> {
    (start..999_999_999).map(|x| format!("{x:09}")).filter(|s| crate::domain::Bsn::parse(s).is_ok()).take(n).collect()
}

/// A registration of `bsn` (born 2014-05-01, default removal date) by professional `who`
/// with e-mail `email`.
pub fn register_request(bsn: &str, who: &str, email: &str) -> pb::RegisterSignalRequest {
    let c = contact(who, "professional", email);
    pb::RegisterSignalRequest {
        bsn: bsn.into(),
        date_of_birth: "2014-05-01".into(),
        professional: Some(pb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
        removal_date: String::new(),
        parent_bsns: vec![],
    }
}

/// [`register_request`] with the child's parents (family matches).
pub fn register_with_parents(bsn: &str, parents: &[&str], who: &str, email: &str) -> pb::RegisterSignalRequest {
    let mut r = register_request(bsn, who, email);
    r.parent_bsns = parents.iter().map(|p| (*p).to_owned()).collect();
    r
}
