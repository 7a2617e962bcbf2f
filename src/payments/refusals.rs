//! How much of a participant's refused frames the audit log keeps: the first refusal per
//! (participant, action, code) in each minute is recorded; the rest of that minute are only
//! counted, and the next record says how many there were. A client sending bad frames as fast
//! as the socket allows then adds one row a minute per kind of mistake, not ten a second.

use std::collections::HashMap;
use std::sync::Mutex;

/// The window in which one refusal of a kind is recorded.
pub const WINDOW_MS: i64 = 60_000;
/// Most kinds tracked at once; beyond it, windows that ended are dropped first, and if every
/// window is live the refusal is recorded (the map never grows without bound).
const MAX_TRACKED: usize = 10_000;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Record it; `earlier` refusals of the same kind were counted and not recorded since the
    /// last record.
    Record {
        /// Refusals left out since the last record.
        earlier: u64,
    },
    /// Count it only.
    Count,
}

/// A kind of refusal: (participant, action, code).
type Kind = (String, String, String);

/// The per-kind windows.
#[derive(Debug, Default)]
pub struct Gate {
    /// (participant, action, code) -> (window start, refusals counted in it). A std mutex: held
    /// for a map lookup only, never across an await.
    windows: Mutex<HashMap<Kind, (i64, u64)>>,
}

impl Gate {
    /// Whether the refusal of `action` with `code` by `participant` at `now` (Unix ms) is recorded.
    pub fn check(&self, participant: &str, action: &str, code: &str, now: i64) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (participant.to_owned(), action.to_owned(), code.to_owned());
        if let Some((start, counted)) = windows.get_mut(&key) {
            if now - *start < WINDOW_MS {
                *counted += 1;
                return Verdict::Count;
            }
            let earlier = *counted;
            *start = now;
            *counted = 0;
            return Verdict::Record { earlier };
        }
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| now - *start < WINDOW_MS);
            if windows.len() >= MAX_TRACKED {
                return Verdict::Record { earlier: 0 };
            }
        }
        windows.insert(key, (now, 0));
        Verdict::Record { earlier: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_kind_per_minute_and_the_rest_are_counted() {
        let gate = Gate::default();
        assert_eq!(gate.check("p", "payment.requested", "InvalidAmount", 0), Verdict::Record { earlier: 0 });
        for t in 1..=5 {
            assert_eq!(gate.check("p", "payment.requested", "InvalidAmount", t * 1000), Verdict::Count);
        }
        assert_eq!(
            gate.check("p", "payment.requested", "Forbidden", 6000),
            Verdict::Record { earlier: 0 },
            "another code"
        );
        assert_eq!(
            gate.check("q", "payment.requested", "InvalidAmount", 6000),
            Verdict::Record { earlier: 0 },
            "another participant"
        );
        assert_eq!(
            gate.check("p", "payment.canceled", "InvalidAmount", 6000),
            Verdict::Record { earlier: 0 },
            "another action"
        );
        assert_eq!(gate.check("p", "payment.requested", "InvalidAmount", WINDOW_MS), Verdict::Record { earlier: 5 });
        assert_eq!(gate.check("p", "payment.requested", "InvalidAmount", WINDOW_MS + 1), Verdict::Count);
    }
}
