//! The benchmark paths run (issue 12): `virfed bench join` and `bench national` print what a
//! tiny join measures, so a change that breaks the bench (as the keys directory once did)
//! fails here and not on the day someone needs the figures. No figure is asserted beyond
//! what must hold at any speed: counts, and sizes that cannot be zero.

use virfed::kit::bench::{join_run, JoinSetup};
use virfed::store::Engine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_join_counts_every_entry_and_measures_the_newcomers_store() {
    for (engine, compression) in [(Engine::Sled, false), (Engine::Sled, true), (Engine::Redb, false)] {
        let (regions, signals) = (2, 24);
        let setup = JoinSetup { regions, signals, parents: false, compression, cache_mb: 16, engine };
        let f = join_run(setup).await.unwrap();
        // Each region publishes its children to the newcomer and the newcomer its own to
        // each region.
        assert_eq!(f.items, 2 * regions * signals);
        // The newcomer holds every region's children and its own blinded for each region.
        assert_eq!(f.footprint.entries as usize, 2 * regions * signals);
        // Every region holds the newcomer's children and its own blinded for it.
        assert_eq!(f.all_entries as usize, 2 * regions * signals + regions * 2 * signals);
        let (keys, logical) = f.footprint.total();
        assert!(keys >= f.footprint.entries && logical > 32 * f.footprint.entries, "{keys} keys, {logical} bytes");
        assert!(f.peak_disk >= f.quiet_disk && f.quiet_disk > 0 && f.rest_disk > 0);
        assert!(f.wall > 0.0 && f.floor > 0.0);
        if cfg!(target_os = "linux") {
            assert!(f.peak_rss.is_some_and(|r| r > 0));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_join_with_parents_counts_each_parent_once_per_peer() {
    for engine in [Engine::Sled, Engine::Redb] {
        let (regions, signals) = (1, 40);
        let setup = JoinSetup { regions, signals, parents: true, compression: false, cache_mb: 16, engine };
        let f = join_run(setup).await.unwrap();
        // More join items than children: parents are published too, once each.
        assert!(f.items > 2 * regions * signals, "{engine:?}: {}", f.items);
        assert_eq!(f.footprint.entries as usize, f.items, "{engine:?}");
    }
}
