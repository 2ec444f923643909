//! One received batch of queue messages, as the engine sees it: events grouped by key (the
//! key's current state is checked once per batch, however many events name it), the newest
//! `sequencer` per key, each message's fate, and which messages may be deleted once the
//! batch's effects are durable.
//!
//! The rules:
//! - A message is deleted when every effect it asked for is done, or when it has no effect
//!   (a test event, an event of no interest).
//! - A malformed message is left for redelivery until its [`MAX_RECEIVES`]th receive, then
//!   discarded; so is a message whose effects keep failing. A poison message never wedges the
//!   share; the next full reconcile repairs whatever it was about.
//! - Every message naming a key shares the outcome of that key's one piece of work; a message
//!   naming several keys is done when all of them are.

use std::collections::HashMap;

use super::events::{EventDecision, on_event};
use crate::model::{BucketEvent, LocalRecord, sequencer_cmp};

/// A message that keeps failing (unparseable, or its change cannot be applied) is removed
/// after this many receives.
pub const MAX_RECEIVES: u32 = 5;

/// The events of one batch that name one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvents {
    pub key: String,
    /// The messages (indexes in the batch) that carry events for this key, in arrival order;
    /// the first one stands for all in the work it causes.
    pub tickets: Vec<usize>,
    /// The greatest `sequencer` among the events (the key's order, when the server sends one).
    pub sequencer: Option<String>,
    events: Vec<BucketEvent>,
}

impl KeyEvents {
    /// Is any of these events worth asking the bucket about, given the key's record?
    pub fn needs_head(&self, prefix: &str, local: Option<&LocalRecord>) -> bool {
        self.events
            .iter()
            .any(|ev| on_event(ev, prefix, local) == EventDecision::Head)
    }
}

/// What happens to one message once the batch is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Its effects are done (or it had none): delete it.
    Done,
    /// Something failed and it has receives left: leave it for redelivery.
    Redeliver,
    /// Malformed, on its last receive: delete it unapplied.
    DiscardMalformed,
    /// Its effects failed on its last receive: delete it; the next full reconcile repairs it.
    GiveUp,
}

impl Fate {
    pub fn deletes(self) -> bool {
        self != Fate::Redeliver
    }
}

/// One batch under way.
#[derive(Debug, Default)]
pub struct Batch {
    keys: Vec<KeyEvents>,
    index: HashMap<String, usize>,
    /// Per message: its receive count, and whether all its effects so far succeeded.
    receives: Vec<u32>,
    ok: Vec<bool>,
    malformed: Vec<bool>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Add the next message (its index is the number of messages added before it) with the
    /// events parsed from it.
    pub fn add(&mut self, receive_count: u32, events: Vec<BucketEvent>) -> usize {
        let ticket = self.push(receive_count, false);
        for ev in events {
            let slot = match self.index.get(&ev.key) {
                Some(&slot) => slot,
                None => {
                    self.keys.push(KeyEvents {
                        key: ev.key.clone(),
                        tickets: Vec::new(),
                        sequencer: None,
                        events: Vec::new(),
                    });
                    self.index.insert(ev.key.clone(), self.keys.len() - 1);
                    self.keys.len() - 1
                }
            };
            let k = &mut self.keys[slot];
            if k.tickets.last() != Some(&ticket) {
                k.tickets.push(ticket);
            }
            if let Some(s) = &ev.sequencer
                && k.sequencer
                    .as_deref()
                    .is_none_or(|cur| sequencer_cmp(s, cur).is_gt())
            {
                k.sequencer = Some(s.clone());
            }
            k.events.push(ev);
        }
        ticket
    }

    /// Add a message that could not be parsed; returns its fate.
    pub fn add_malformed(&mut self, receive_count: u32) -> Fate {
        let ticket = self.push(receive_count, true);
        self.fate(ticket)
    }

    fn push(&mut self, receive_count: u32, malformed: bool) -> usize {
        self.receives.push(receive_count);
        self.ok.push(!malformed);
        self.malformed.push(malformed);
        self.receives.len() - 1
    }

    /// The keys named in the batch, in order of first appearance.
    pub fn keys(&self) -> &[KeyEvents] {
        &self.keys
    }

    /// The work for the key at `index` in [`Batch::keys`] failed: so did every message that
    /// named it. (Work is per key, so a pool job of an event batch carries the key's index.)
    pub fn fail_key(&mut self, index: usize) {
        if let Some(k) = self.keys.get(index) {
            for &t in &k.tickets {
                self.ok[t] = false;
            }
        }
    }

    /// What happens to message `ticket` once the batch's effects are durable.
    pub fn fate(&self, ticket: usize) -> Fate {
        let last_receive = self.receives[ticket] >= MAX_RECEIVES;
        match (self.ok[ticket], self.malformed[ticket], last_receive) {
            (true, _, _) => Fate::Done,
            (false, _, false) => Fate::Redeliver,
            (false, true, true) => Fate::DiscardMalformed,
            (false, false, true) => Fate::GiveUp,
        }
    }

    /// Number of messages in the batch.
    pub fn len(&self) -> usize {
        self.receives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.receives.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn ev(key: &str, seq: Option<&str>) -> BucketEvent {
        BucketEvent {
            bucket: "b".into(),
            key: key.into(),
            kind: EventKind::Created,
            event_name: "ObjectCreated:Put".into(),
            size: Some(1),
            etag: Some("e".into()),
            sequencer: seq.map(Into::into),
        }
    }

    #[test]
    fn events_group_by_key_with_the_newest_sequencer() {
        let mut b = Batch::new();
        b.add(1, vec![ev("a", Some("0A")), ev("b", None)]);
        b.add(1, vec![ev("a", Some("0B")), ev("a", Some("09"))]);
        b.add(1, vec![ev("b", Some("01"))]);
        let keys = b.keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (keys[0].key.as_str(), &keys[0].tickets[..]),
            ("a", &[0, 1][..])
        );
        assert_eq!(keys[0].sequencer.as_deref(), Some("0B"));
        assert_eq!(
            (keys[1].key.as_str(), &keys[1].tickets[..]),
            ("b", &[0, 2][..])
        );
        assert_eq!(keys[1].sequencer.as_deref(), Some("01"));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn messages_naming_a_failed_key_share_its_failure() {
        let mut b = Batch::new();
        b.add(1, vec![ev("a", None)]);
        b.add(1, vec![ev("a", None), ev("b", None)]);
        b.add(1, vec![ev("b", None)]);
        b.fail_key(0);
        assert_eq!(b.fate(0), Fate::Redeliver);
        assert_eq!(b.fate(1), Fate::Redeliver, "carries a's event too");
        assert_eq!(b.fate(2), Fate::Done, "only b's, which succeeded");
        b.fail_key(1);
        b.fail_key(7); // out of range: ignored
        assert_eq!(b.fate(2), Fate::Redeliver);
    }

    #[test]
    fn poison_messages_go_on_their_last_receive() {
        let mut b = Batch::new();
        assert_eq!(b.add_malformed(1), Fate::Redeliver);
        assert_eq!(b.add_malformed(MAX_RECEIVES), Fate::DiscardMalformed);
        let t = b.add(MAX_RECEIVES, vec![ev("a", None)]);
        b.fail_key(0);
        assert_eq!(b.fate(t), Fate::GiveUp);
        assert!(b.fate(t).deletes() && !b.fate(0).deletes());
        // No events at all (a test event): done at once.
        let t = b.add(1, Vec::new());
        assert_eq!(b.fate(t), Fate::Done);
    }

    #[test]
    fn a_key_needs_a_head_unless_every_event_is_stale() {
        let mut b = Batch::new();
        b.add(1, vec![ev("a", Some("05")), ev("a", Some("07"))]);
        let local = LocalRecord {
            key: "a".into(),
            size: 9,
            etag: Some("old".into()),
            last_modified: 1,
            crc64nvme: 0,
            sequencer: Some("06".into()),
        };
        assert!(b.keys()[0].needs_head("", Some(&local)));
        let mut newer = local.clone();
        newer.sequencer = Some("07".into());
        assert!(!b.keys()[0].needs_head("", Some(&newer)));
        assert!(!b.keys()[0].needs_head("other/", None));
    }
}
