//! Proof under faults (issue 11), the short forms: crash cycles with real node processes.
//! The long form is `virfed bench crash --cycles 50` (docs/reliability.md).

use virfed::kit::faults::{crash_cycles, CrashOptions, CrashReport, REGIONS};
use virfed::store::Engine;

async fn cycles(engine: Engine, cycles: u32, seed: u64) -> CrashReport {
    let options = CrashOptions { binary: env!("CARGO_BIN_EXE_virfed").into(), cycles, seed, engine, dir: None };
    let report =
        crash_cycles(&options, |line| eprintln!("{line}")).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let summary = report.summary();
    assert!(report.clean(), "seed {seed}, {engine:?}:\n{summary}");
    assert_eq!(report.cycles, cycles, "{summary}");
    // Not vacuous: the load was real, pairs formed across borders, notices flowed, and every
    // kill and every clean stop had its audit chain checked.
    assert!(report.acked_registrations > 50 * u64::from(cycles), "{summary}");
    assert!(report.acked_withdrawals > 0, "{summary}");
    assert!(report.cross_region_pairs > 0, "{summary}");
    assert!(report.notices > report.cross_region_pairs, "{summary}");
    assert_eq!(report.audit_checks, cycles + REGIONS.len() as u32, "{summary}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_4_5_8_crash_cycles_lose_no_acknowledged_write_and_double_no_pair_or_notice() {
    cycles(Engine::Sled, 3, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_4_5_8_crash_cycles_on_redb_stores_too() {
    cycles(Engine::Redb, 2, 12).await;
}
