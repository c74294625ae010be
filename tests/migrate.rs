//! Schema upgrades (issue 5, item 3): a store written by the previous schema (the fixture
//! in tests/fixtures/store-v1, made by `regenerate_store_v1_fixture`) is migrated when it
//! is opened; a dry run says what would change and changes nothing.

use std::path::{Path, PathBuf};

use virfed::store::migrate::plan;
use virfed::store::{Store, StoreOptions, SCHEMA_VERSION};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn schema_of(path: &Path) -> u32 {
    let db = sled::open(path).unwrap();
    let v = db.open_tree("meta").unwrap().get("schema_version").unwrap().unwrap();
    u32::from_be_bytes(v.as_ref().try_into().unwrap())
}

#[test]
fn store_from_schema_1_is_migrated_on_open_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    copy_dir(&fixture(), &store_path);
    assert_eq!(schema_of(&store_path), 1);

    let steps = plan(&store_path).unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!((steps[0].from, steps[0].to, steps[0].entries), (1, 2, 3));
    assert_eq!(schema_of(&store_path), 1, "a dry run must not migrate");

    let store = Store::open(&store_path, &StoreOptions::default()).unwrap();
    let queued = store.outbox_batch::<virfed::federation::OutItem>("utrecht", 10).unwrap();
    assert_eq!(queued.len(), 3, "every queued item survives the migration, in order");
    assert!(queued.iter().all(|o| matches!(o.item, virfed::federation::OutItem::Publish(_))));
    assert!(queued.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(store.outbox_oldest("utrecht").unwrap().is_some(), "migrated items carry a queue time");
    assert_eq!(store.counts().unwrap().active, 3);
    assert!(store.verify_audit().unwrap().is_ok(), "the audit chain survives the migration");
    drop(store);
    assert_eq!(schema_of(&store_path), SCHEMA_VERSION);
    assert!(plan(&store_path).unwrap().is_empty(), "nothing left to migrate");
}

#[test]
fn store_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    copy_dir(&fixture(), &store_path);
    {
        let db = sled::open(&store_path).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(&store_path, &StoreOptions::default()).err().expect("a newer store must be refused");
    assert!(err.to_string().contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{err}");
}

/// Writes tests/fixtures/store-v1: three signals and their outbox items for a peer, in
/// the schema-1 layout (outbox values are bare items). Run by hand when the fixture must
/// be rebuilt: `cargo test --test migrate -- --ignored`.
#[tokio::test]
#[ignore]
async fn regenerate_store_v1_fixture() {
    use virfed::domain::{Bsn, Clock, OrgDomain, OrgId, Organisation, SystemClock};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path, &StoreOptions::default()).unwrap();
    let local = virfed::pseudonym::LocalKey::from_bytes([3; 32]);
    let blind = virfed::pseudonym::BlindKey::from_bytes([9; 32]).unwrap();
    let pairs = virfed::federation::Pairs::new(vec!["utrecht".into()], local.clone(), None);
    let registry = virfed::registry::Registry::with_federation(store.clone(), std::sync::Arc::new(pairs));
    let org = Organisation {
        id: OrgId::parse("jeugdzorg").unwrap(),
        name: "Jeugdzorg".into(),
        domain: OrgDomain::YouthCare,
        coordinator: None,
    };
    registry.put_org(&org, "fixture", SystemClock.now()).await.unwrap();
    for bsn in ["111222333", "123456782", "047812618"] {
        let bsn = Bsn::parse(bsn).unwrap();
        let new = virfed::registry::NewSignal {
            child: local.child_key(&bsn),
            org: org.id.clone(),
            professional: virfed::kit::fixture::contact("F. Ixture", "professional", "fixture@example.nl"),
            date_of_birth: chrono::NaiveDate::from_ymd_opt(2014, 5, 1).unwrap(),
            removal_date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(),
            now: SystemClock.now(),
            point: Some(blind.blind_bsn(&bsn)),
            parents: vec![],
            lookup: None,
        };
        registry.register(&new, "fixture").await.unwrap();
    }
    drop((registry, store));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let db = sled::open(&path).unwrap();
    let outbox = db.open_tree("outbox").unwrap();
    for item in outbox.iter() {
        let (k, v) = item.unwrap();
        let queued: virfed::store::Queued<virfed::federation::OutItem> = postcard::from_bytes(&v).unwrap();
        outbox.insert(k, postcard::to_stdvec(&queued.item).unwrap()).unwrap();
    }
    db.open_tree("meta").unwrap().insert("schema_version", &1u32.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);
    let _ = std::fs::remove_dir_all(fixture());
    copy_dir(&path, &fixture());
}
