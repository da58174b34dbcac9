//! The resume window: the most recent events, so that a client that reconnects with the
//! last position it saw gets every event it missed.
//!
//! Bounded by a number of events (`resume_window`) and by their approximate size
//! (`resume_window_bytes`); the oldest go first. `floor` is the position after which the
//! window is complete: every event with a greater position is in it. At start the window is
//! empty and complete from the last position the log holds, so a client that saw everything
//! before a restart resumes with nothing missed; a client that is further behind than the
//! window (or the restart) reaches is served from the log ([`super::replay`]), or told
//! `recovered: false` when the log no longer reaches back either.

use std::collections::VecDeque;
use std::sync::Arc;

use super::event::Event;

pub struct Window {
    events: VecDeque<Arc<Event>>,
    /// Every event with a position above this is in the window.
    floor: u64,
    /// The position of the newest event seen (or `floor`).
    head: u64,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Window {
    pub fn new(start: u64, max_events: usize, max_bytes: usize) -> Window {
        Window {
            events: VecDeque::new(),
            floor: start,
            head: start,
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn push(&mut self, ev: Arc<Event>) {
        self.head = ev.seq;
        self.bytes += ev.size();
        self.events.push_back(ev);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            self.floor = old.seq;
        }
    }

    /// Every event after position `from`, oldest first, or `None` when the window no longer
    /// reaches back that far.
    pub fn since(&self, from: u64) -> Option<Vec<Arc<Event>>> {
        if from < self.floor {
            return None;
        }
        let start = self.events.partition_point(|e| e.seq <= from);
        Some(self.events.range(start..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Change, ChangeKind};

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(Change {
            seq,
            kind: ChangeKind::Delete,
            published: false,
            endpoint: "a/b".into(),
            namespace: String::new(),
            id: "x".into(),
            old: None,
            new: None,
        }))
    }

    #[test]
    fn the_window_keeps_the_newest_and_knows_how_far_it_reaches() {
        let mut w = Window::new(10, 3, usize::MAX);
        assert_eq!(w.since(10).map(|v| v.len()), Some(0));
        assert!(w.since(9).is_none());
        for s in 11..=15 {
            w.push(ev(s));
        }
        assert_eq!((w.floor(), w.head(), w.len()), (12, 15, 3));
        let seqs = |v: Vec<Arc<Event>>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(w.since(12).map(seqs), Some(vec![13, 14, 15]));
        assert_eq!(w.since(14).map(seqs), Some(vec![15]));
        assert!(w.since(11).is_none());
        let mut small = Window::new(0, 100, 600);
        for s in 1..=10 {
            small.push(ev(s));
        }
        assert!(small.len() < 10, "the byte bound evicts");
    }
}
