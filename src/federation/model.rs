//! The pair protocol, model-checked (issue 11, part 4), next to the code it mirrors.
//!
//! A model of what [`super::pairs`], [`super::sync`] and [`super::delivery`] do with one
//! child known at every node of a small federation, written apart from that code and
//! checked exhaustively (breadth first, to a depth) with the `stateright` model checker:
//!
//! - **local changes**: an organisation registers on the child (the first makes the child
//!   active and publishes it to every peer, later ones send their own contacts to matched
//!   peers), withdraws (a party gone, or the child inactive), and the child is erased once
//!   no signal is active (a Remove to every peer);
//! - **the outbox**: one per (node, peer), sequence numbers from one counter per node, the
//!   last item queued about the child remembered until acknowledged (fed tag `Q`);
//! - **delivery**: one request in flight per link, carrying the whole outbox; the receiver
//!   applies each item above the last applied sequence number once (idempotency), answers
//!   a Publish with its blinded value (modelled as "linked") and with its contacts when
//!   the publish completed a pair, and a live Contacts item with its own contacts, unless
//!   items of its own about the child still wait for the asker (the hold-back rule); the
//!   answer states its outbox sequence number (`as_of_seq`);
//! - **the asker** applies the answers, removes the acknowledged items, and applies the
//!   answer's contacts only for a pair it detected itself, and not when an item of the
//!   peer's newer than the answer was applied while the request was in flight (then it
//!   sends its contacts again);
//! - **faults**: any message lost or duplicated, messages delivered in any order (the
//!   network is a multiset), a request given up on (timeout) once its messages are gone,
//!   and a node crashing: it keeps its store and loses what it held in memory (the request
//!   in flight and what was applied during it).
//!
//! The properties are named checks (see [`Model::properties`] below): no notice twice;
//! contacts only for a detected pair; both sides of a pair agree once quiet; no withdrawal
//! lost; a removed child leaves no entry at any peer; and, so the checks are not vacuous,
//! that a quiet federation with a pair at both sides is reachable.
//!
//! What it does not cover (docs/reliability.md says the same): more than one child, so no
//! family pairs (parents) and no cross-child effects; history contacts (D6, archived); the
//! blinding itself (a publish's answer is taken as correct: the DLEQ proof is tested on the
//! real code); re-keys, restores and new epochs; budgets and resync tickets; batching
//! limits (a request carries the whole outbox); and a node's own concurrency (each step is
//! one atomic transaction, as the store's single writer makes it).

use stateright::{Checker, Model, Property};

/// What one run checks: the federation's size, the fault budgets and the depth.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Nodes (2 or 3).
    pub nodes: usize,
    /// Organisations that can register at the first node (1 or 2; one at the others).
    pub orgs: usize,
    /// Registrations, withdrawals and erasures, in all.
    pub local_changes: u8,
    pub losses: u8,
    pub duplicates: u8,
    pub crashes: u8,
    /// Steps explored from the start.
    pub max_depth: usize,
    /// The rules the code has, each switchable so a test can show the model finds what
    /// each one prevents.
    pub hold_back: bool,
    pub overtaken_check: bool,
    /// A replayed Contacts item is answered with the receiver's contacts, as a replayed
    /// publish is (off: as before the model found the lost-answer defect).
    pub replay_answers: bool,
}

impl ModelConfig {
    /// The short form `cargo test` runs exhaustively: two nodes, every kind of fault once,
    /// deep enough for a pair to form at both sides and the federation to go quiet.
    pub fn short() -> ModelConfig {
        ModelConfig {
            nodes: 2,
            orgs: 2,
            local_changes: 3,
            losses: 1,
            duplicates: 1,
            crashes: 1,
            max_depth: 16,
            hold_back: true,
            overtaken_check: true,
            replay_answers: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Org {
    NotYet,
    Active,
    Withdrawn,
}

/// A peer protocol item about the sender's one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    Publish {
        active: bool,
    },
    State {
        active: bool,
    },
    Remove,
    /// The sender's parties, a bit per organisation.
    Contacts {
        parties: u8,
    },
    PartyGone {
        org: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Request {
        from: u8,
        to: u8,
        id: u8,
        items: Vec<(u16, Item)>,
    },
    /// `answers`: per item, its seq and the answerer's contacts (a bit per organisation).
    Response {
        from: u8,
        to: u8,
        id: u8,
        answers: Vec<(u16, u8)>,
        as_of: u16,
    },
}

/// What node `n` holds about peer `m`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Link {
    outbox: Vec<(u16, Item)>,
    queued_about: Option<u16>,
    /// Last sequence number applied from the peer.
    seen: u16,
    /// The peer's child in my index, and whether it is active.
    entry: Option<bool>,
    /// My publish to the peer was answered (I hold its blinded value).
    linked: bool,
    published: bool,
    matched: bool,
    /// The peer's parties I know (their contacts), a bit per organisation.
    remote: u8,
    /// The peer's parties ever announced to my reporters.
    announced: u8,
    /// Attempts so far (the id of the request in flight is the last).
    attempts: u8,
    in_flight: bool,
    /// In memory, while a request is in flight: the newest seq of the peer's items applied.
    touched: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    orgs: Vec<Org>,
    removed: bool,
    seq: u16,
    links: Vec<Link>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    nodes: Vec<Node>,
    /// Messages in flight, kept sorted (a multiset: any may be delivered next).
    network: Vec<Msg>,
    local_changes: u8,
    losses: u8,
    duplicates: u8,
    crashes: u8,
    /// A notice told twice: (node, peer, organisation).
    doubled: Option<(u8, u8, u8)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Register(u8, u8),
    Withdraw(u8, u8),
    Erase(u8),
    Send(u8, u8),
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    Timeout(u8, u8),
    Crash(u8),
}

fn bit(org: usize) -> u8 {
    1 << org
}

impl Node {
    fn active(&self) -> u8 {
        self.orgs.iter().enumerate().filter(|(_, o)| **o == Org::Active).fold(0, |a, (i, _)| a | bit(i))
    }

    fn withdrawn(&self) -> u8 {
        self.orgs.iter().enumerate().filter(|(_, o)| **o == Org::Withdrawn).fold(0, |a, (i, _)| a | bit(i))
    }

    fn queue(&mut self, m: usize, item: Item) {
        self.seq += 1;
        let seq = self.seq;
        self.links[m].outbox.push((seq, item));
        self.links[m].queued_about = Some(seq);
    }

    fn waiting_about(&self, m: usize) -> bool {
        let l = &self.links[m];
        l.queued_about.is_some_and(|s| l.outbox.iter().any(|(q, _)| *q == s))
    }

    /// `Pairs::reconcile`: matched iff my child is active, the peer's is active in my
    /// index, and I hold my own blinded value towards the peer. A new pair sends my
    /// contacts (returned too, for an answer); an ended one forgets the peer's parties.
    fn reconcile(&mut self, m: usize) -> Option<u8> {
        let active = self.active();
        let l = &self.links[m];
        let should = !self.removed && active != 0 && l.entry == Some(true) && l.linked;
        if should && !l.matched {
            self.links[m].matched = true;
            self.queue(m, Item::Contacts { parties: active });
            return Some(active);
        }
        if !should && l.matched {
            let l = &mut self.links[m];
            l.matched = false;
            l.remote = 0;
        }
        None
    }

    /// `Pairs::receive_contacts` for a live pair: applied only to a pair detected here.
    /// Returns the organisations announced a second time, if any.
    fn receive_contacts(&mut self, m: usize, parties: u8) -> (bool, u8) {
        let l = &mut self.links[m];
        if !l.matched || self.removed {
            return (false, 0);
        }
        let fresh = parties & !l.remote;
        l.remote |= parties;
        let twice = fresh & l.announced;
        l.announced |= fresh;
        (true, twice)
    }

    /// `Pairs::contacts_answer`: my contacts for a matched pair, unless items about the
    /// child still wait for the peer; then a fresh copy goes behind them instead.
    fn contacts_answer(&mut self, m: usize, hold_back: bool) -> u8 {
        if !self.links[m].matched {
            return 0;
        }
        let active = self.active();
        if hold_back && self.waiting_about(m) {
            if active != 0 {
                self.queue(m, Item::Contacts { parties: active });
            }
            return 0;
        }
        active
    }
}

/// The model of a federation under `config`.
#[derive(Clone, Debug)]
pub struct PairProtocol {
    pub config: ModelConfig,
}

impl PairProtocol {
    fn others(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.config.nodes).filter(move |m| *m != n)
    }

    fn publish_changes(&self, s: &mut State, n: usize, was_active: bool, new_org: Option<usize>) {
        let node = &mut s.nodes[n];
        let active = node.active() != 0;
        for m in self.others(n) {
            if active && !was_active {
                let item = if node.links[m].published {
                    Item::State { active: true }
                } else {
                    node.links[m].published = true;
                    Item::Publish { active: true }
                };
                node.queue(m, item);
            } else if !active && was_active {
                node.queue(m, Item::State { active: false });
            } else if let (Some(org), true) = (new_org, node.links[m].matched) {
                node.queue(m, Item::Contacts { parties: bit(org) });
            }
            node.reconcile(m);
        }
    }

    /// The receiver `to` applies a request from `from`; returns its response.
    fn apply_request(&self, s: &mut State, from: usize, to: usize, id: u8, items: &[(u16, Item)]) -> Msg {
        let mut answers = Vec::new();
        for &(seq, item) in items {
            let node = &mut s.nodes[to];
            let mut contacts = 0;
            if seq > node.links[from].seen {
                node.links[from].seen = seq;
                match item {
                    Item::Publish { active } => {
                        let behind = self.config.hold_back && node.links[from].linked && node.waiting_about(from);
                        node.links[from].entry = Some(active);
                        if let Some(sent) = node.reconcile(from) {
                            if !behind {
                                contacts = sent;
                            }
                        }
                    }
                    Item::State { active } => {
                        if node.links[from].entry.is_some() {
                            node.links[from].entry = Some(active);
                            node.reconcile(from);
                        }
                    }
                    Item::Remove => {
                        node.links[from].entry = None;
                        node.reconcile(from);
                    }
                    Item::Contacts { parties } => {
                        let (applied, twice) = node.receive_contacts(from, parties);
                        if twice != 0 {
                            s.doubled.get_or_insert((to as u8, from as u8, twice));
                        }
                        let node = &mut s.nodes[to];
                        if applied {
                            contacts = node.contacts_answer(from, self.config.hold_back);
                        }
                    }
                    Item::PartyGone { org } => node.links[from].remote &= !org,
                }
                let l = &mut s.nodes[to].links[from];
                if l.in_flight {
                    l.touched = Some(seq);
                }
            } else if matches!(item, Item::Publish { .. } | Item::Contacts { .. }) && self.config.replay_answers {
                // A replayed publish or live contacts item is answered from the pair now.
                contacts = node.contacts_answer(from, self.config.hold_back);
            } else if let Item::Publish { .. } = item {
                contacts = node.contacts_answer(from, self.config.hold_back);
            }
            answers.push((seq, contacts));
        }
        Msg::Response { from: to as u8, to: from as u8, id, answers, as_of: s.nodes[to].seq }
    }

    /// The asker `to` applies the answers of `from` to its request `id`.
    fn apply_response(&self, s: &mut State, from: usize, to: usize, id: u8, answers: &[(u16, u8)], as_of: u16) {
        let l = &s.nodes[to].links[from];
        if !l.in_flight || l.attempts != id {
            return; // an answer to a request given up on: the caller no longer waits for it
        }
        let touched = l.touched;
        for &(seq, contacts) in answers {
            let node = &mut s.nodes[to];
            let Some(pos) = node.links[from].outbox.iter().position(|(q, _)| *q == seq) else { continue };
            let (_, item) = node.links[from].outbox.remove(pos);
            if node.links[from].queued_about == Some(seq) {
                node.links[from].queued_about = None;
            }
            let carries = match item {
                Item::Publish { .. } => {
                    if !node.removed {
                        node.links[from].linked = true;
                        node.reconcile(from);
                    }
                    true
                }
                Item::Contacts { .. } => true,
                _ => false,
            };
            if !carries || contacts == 0 {
                continue;
            }
            let overtaken = touched.is_some_and(|t| as_of == 0 || t > as_of);
            if self.config.overtaken_check && overtaken {
                // `Pairs::stale_contacts`: not applied; my contacts go again.
                let active = node.active();
                if node.links[from].matched && active != 0 {
                    node.queue(from, Item::Contacts { parties: active });
                }
            } else {
                let (_, twice) = node.receive_contacts(from, contacts);
                if twice != 0 {
                    s.doubled.get_or_insert((to as u8, from as u8, twice));
                }
            }
        }
        let l = &mut s.nodes[to].links[from];
        l.in_flight = false;
        l.touched = None;
    }

    fn message_of_flight(s: &State, n: usize, m: usize, id: u8) -> bool {
        s.network.iter().any(|msg| match msg {
            Msg::Request { from, to, id: i, .. } => (*from as usize, *to as usize, *i) == (n, m, id),
            Msg::Response { from, to, id: i, .. } => (*to as usize, *from as usize, *i) == (n, m, id),
        })
    }

    /// No message in flight, no request waited on, every outbox empty.
    pub fn quiet(&self, s: &State) -> bool {
        s.network.is_empty() && s.nodes.iter().all(|n| n.links.iter().all(|l| !l.in_flight && l.outbox.is_empty()))
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.config.nodes).flat_map(move |n| self.others(n).map(move |m| (n, m)))
    }

    /// Runs the checker; returns it for its discoveries and counts.
    pub fn check(self) -> impl Checker<PairProtocol> {
        let depth = self.config.max_depth;
        self.checker().target_max_depth(depth).spawn_bfs().join()
    }
}

impl Model for PairProtocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let n = self.config.nodes;
        let node = |orgs: usize| Node {
            orgs: vec![Org::NotYet; orgs],
            removed: false,
            seq: 0,
            links: vec![Link::default(); n],
        };
        vec![State {
            nodes: (0..n).map(|i| node(if i == 0 { self.config.orgs } else { 1 })).collect(),
            network: Vec::new(),
            local_changes: self.config.local_changes,
            losses: self.config.losses,
            duplicates: self.config.duplicates,
            crashes: self.config.crashes,
            doubled: None,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (n, node) in s.nodes.iter().enumerate() {
            let n8 = n as u8;
            if s.local_changes > 0 && !node.removed {
                for (o, org) in node.orgs.iter().enumerate() {
                    match org {
                        Org::NotYet => actions.push(Action::Register(n8, o as u8)),
                        Org::Active => actions.push(Action::Withdraw(n8, o as u8)),
                        Org::Withdrawn => {}
                    }
                }
                if node.active() == 0 && node.withdrawn() != 0 {
                    actions.push(Action::Erase(n8));
                }
            }
            for m in self.others(n) {
                let l = &node.links[m];
                if !l.in_flight && !l.outbox.is_empty() {
                    actions.push(Action::Send(n8, m as u8));
                }
                if l.in_flight && !Self::message_of_flight(s, n, m, l.attempts) {
                    actions.push(Action::Timeout(n8, m as u8));
                }
            }
            // A crash changes nothing but a request in flight (the store is kept).
            if s.crashes > 0 && node.links.iter().any(|l| l.in_flight) {
                actions.push(Action::Crash(n8));
            }
        }
        for i in 0..s.network.len() {
            if i > 0 && s.network[i] == s.network[i - 1] {
                continue; // the same message twice: one choice
            }
            actions.push(Action::Deliver(i));
            if s.losses > 0 {
                actions.push(Action::Lose(i));
            }
            if s.duplicates > 0 {
                actions.push(Action::Duplicate(i));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Register(n, o) => {
                let n = n as usize;
                let was_active = s.nodes[n].active() != 0;
                s.nodes[n].orgs[o as usize] = Org::Active;
                s.local_changes -= 1;
                self.publish_changes(&mut s, n, was_active, Some(o as usize));
            }
            Action::Withdraw(n, o) => {
                let n = n as usize;
                s.nodes[n].orgs[o as usize] = Org::Withdrawn;
                s.local_changes -= 1;
                let still = s.nodes[n].active() != 0;
                if still {
                    for m in self.others(n) {
                        if s.nodes[n].links[m].matched {
                            s.nodes[n].queue(m, Item::PartyGone { org: bit(o as usize) });
                        }
                    }
                } else {
                    self.publish_changes(&mut s, n, true, None);
                    // No reporter of mine is left: whoever registers next hears of the
                    // peers' parties afresh (a notice to another recipient, not a repeat).
                    s.nodes[n].links.iter_mut().for_each(|l| l.announced = 0);
                }
            }
            Action::Erase(n) => {
                let n = n as usize;
                s.local_changes -= 1;
                s.nodes[n].removed = true;
                for m in self.others(n) {
                    let node = &mut s.nodes[n];
                    if node.links[m].published {
                        node.queue(m, Item::Remove);
                    }
                    node.links[m].published = false;
                    node.links[m].linked = false;
                    node.reconcile(m);
                }
            }
            Action::Send(n, m) => {
                let l = &mut s.nodes[n as usize].links[m as usize];
                l.attempts += 1;
                l.in_flight = true;
                l.touched = None;
                let msg = Msg::Request { from: n, to: m, id: l.attempts, items: l.outbox.clone() };
                s.network.push(msg);
            }
            Action::Deliver(i) => match s.network.remove(i) {
                Msg::Request { from, to, id, items } => {
                    let response = self.apply_request(&mut s, from as usize, to as usize, id, &items);
                    s.network.push(response);
                }
                Msg::Response { from, to, id, answers, as_of } => {
                    self.apply_response(&mut s, from as usize, to as usize, id, &answers, as_of);
                }
            },
            Action::Lose(i) => {
                s.losses -= 1;
                s.network.remove(i);
            }
            Action::Duplicate(i) => {
                s.duplicates -= 1;
                let copy = s.network[i].clone();
                s.network.push(copy);
            }
            Action::Timeout(n, m) => {
                let l = &mut s.nodes[n as usize].links[m as usize];
                l.in_flight = false;
                l.touched = None;
            }
            Action::Crash(n) => {
                s.crashes -= 1;
                for l in &mut s.nodes[n as usize].links {
                    l.in_flight = false;
                    l.touched = None;
                }
            }
        }
        s.network.sort();
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no notice twice", |_, s: &State| s.doubled.is_none()),
            Property::always("contacts only for a detected pair", |m: &PairProtocol, s: &State| {
                m.pairs().all(|(n, p)| {
                    let l = &s.nodes[n].links[p];
                    // Known parties only on a pair detected here, and only parties the
                    // peer has had.
                    (l.remote == 0 || l.matched) && l.remote & !(s.nodes[p].active() | s.nodes[p].withdrawn()) == 0
                })
            }),
            Property::always("both sides of a pair agree once quiet", |m: &PairProtocol, s: &State| {
                !m.quiet(s)
                    || m.pairs().all(|(n, p)| {
                        let (a, b) = (&s.nodes[n], &s.nodes[p]);
                        let should = !a.removed && !b.removed && a.active() != 0 && b.active() != 0;
                        let l = &a.links[p];
                        l.matched == should && l.matched == b.links[n].matched && (!should || l.remote == b.active())
                    })
            }),
            Property::always("no withdrawal lost", |m: &PairProtocol, s: &State| {
                !m.quiet(s) || m.pairs().all(|(n, p)| s.nodes[n].links[p].remote & s.nodes[p].withdrawn() == 0)
            }),
            Property::always("a removed child leaves no entry at any peer", |m: &PairProtocol, s: &State| {
                !m.quiet(s) || m.pairs().all(|(n, p)| !s.nodes[p].removed || s.nodes[n].links[p].entry.is_none())
            }),
            Property::sometimes("a pair at both sides, quiet", |m: &PairProtocol, s: &State| {
                m.quiet(s) && m.pairs().any(|(n, p)| s.nodes[n].links[p].matched && s.nodes[p].links[n].matched)
            }),
        ]
    }
}
