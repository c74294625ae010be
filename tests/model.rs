//! Issue 11, part 4: the pair protocol's model (`virfed::federation::model`), checked
//! exhaustively with stateright to a depth. The long form is `virfed bench model`.

use stateright::{Checker, Model};
use virfed::federation::model::{ModelConfig, PairProtocol};

fn run(config: ModelConfig) -> impl Checker<PairProtocol> {
    let checker = PairProtocol { config }.check();
    eprintln!("{} unique states to depth {}", checker.unique_state_count(), checker.max_depth());
    checker
}

/// Two nodes, every interleaving, a loss, a duplicate and a crash anywhere: every property
/// holds, and a quiet federation with a pair at both sides is reached (so the "once
/// quiet" checks are not vacuous).
#[test]
fn invariants_3_5_pair_protocol_model_holds_with_loss_duplication_reordering_and_a_crash() {
    run(ModelConfig::short()).assert_properties();
}

/// Three nodes, to a smaller depth (each link's exchanges interleaved with the others'):
/// nothing is told twice and no contacts exist without a detected pair. (The quiet
/// properties need a deeper run: `virfed bench model`.)
#[test]
fn invariants_3_5_pair_protocol_model_on_three_nodes_tells_nothing_twice() {
    let checker = run(ModelConfig { nodes: 3, max_depth: 9, ..ModelConfig::short() });
    for property in checker.model().properties() {
        if property.expectation == stateright::Expectation::Always {
            checker.assert_no_discovery(property.name);
        }
    }
}

/// Where the defects live: two parties at one node, one of them withdrawn while its
/// contacts are in flight; no faults needed (reordering alone does it), deeper.
fn defect_search() -> ModelConfig {
    ModelConfig { local_changes: 4, losses: 0, duplicates: 0, crashes: 0, max_depth: 22, ..ModelConfig::short() }
}

/// Deeper, without faults (messages still delivered in any order): two parties at one
/// node, one withdrawn while contacts are in flight. Every property holds.
#[test]
fn invariants_3_5_pair_protocol_model_holds_deeper_when_a_party_leaves_mid_exchange() {
    run(defect_search()).assert_properties();
}

/// The model can fail: without the asker's check for an answer overtaken by the peer's
/// newer items (the defect the network-fault cycles found), it finds a notice told twice.
#[test]
fn invariant5_pair_protocol_model_finds_the_overtaken_answer_when_its_check_is_off() {
    let checker = run(ModelConfig { overtaken_check: false, ..defect_search() });
    assert!(checker.discovery("no notice twice").is_some(), "the model did not find the overtaken answer");
}

/// And without a replayed Contacts item's answer: the peer's reply to my contacts is lost,
/// I send them again, the replay is answered with nothing, and I never hear the peer's
/// contacts (found by this model at depth 20; fixed in `apply_exchange`).
#[test]
fn invariant5_pair_protocol_model_finds_the_lost_contacts_reply_when_replays_are_not_answered() {
    let config = ModelConfig {
        replay_answers: false,
        local_changes: 2,
        losses: 1,
        duplicates: 0,
        crashes: 0,
        max_depth: 22,
        ..ModelConfig::short()
    };
    let checker = run(config);
    assert!(checker.discovery("both sides of a pair agree once quiet").is_some(), "the model did not find it");
}

/// And without the answerer's hold-back (the defect the crash cycles found).
#[test]
fn invariant5_pair_protocol_model_finds_the_answer_overtaking_queued_items_when_hold_back_is_off() {
    let checker = run(ModelConfig { hold_back: false, ..defect_search() });
    assert!(checker.discovery("no notice twice").is_some(), "the model did not find the overtaking answer");
}
