//! [`Throttle`]: at most one log line per kind of event per window, so a peer that
//! floods a node with what it drops cannot fill the disk with log lines. The
//! metrics count every event; the log keeps a sample of each kind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often each kind of dropped message or refused connection may be logged.
pub(crate) const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Rate-limits log lines by a key (a drop reason, a close reason).
#[derive(Debug)]
pub(crate) struct Throttle {
    window: Duration,
    keys: HashMap<&'static str, Held>,
}

#[derive(Debug)]
struct Held {
    logged_at: Instant,
    held_back: u64,
}

impl Throttle {
    /// A throttle that lets one line per key through per `window`.
    pub(crate) fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            keys: HashMap::new(),
        }
    }

    /// Whether a line for `key` may be logged at `now`: `Some(n)` with the number
    /// of lines of that key held back since the last one logged, `None` to stay
    /// quiet (the event is then counted toward the next line).
    pub(crate) fn admit(&mut self, key: &'static str, now: Instant) -> Option<u64> {
        match self.keys.get_mut(key) {
            None => {
                self.keys.insert(
                    key,
                    Held {
                        logged_at: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
            Some(held) if now.saturating_duration_since(held.logged_at) >= self.window => {
                let n = held.held_back;
                held.logged_at = now;
                held.held_back = 0;
                Some(n)
            }
            Some(held) => {
                held.held_back += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_window_with_the_count_held_back() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(t.admit("a", at(0)), Some(0));
        // Another key has its own window.
        assert_eq!(t.admit("b", at(1)), Some(0));
        for s in 1..10 {
            assert_eq!(t.admit("a", at(s)), None, "second {s}");
        }
        assert_eq!(t.admit("a", at(10)), Some(9));
        assert_eq!(t.admit("a", at(11)), None);
        assert_eq!(t.admit("a", at(25)), Some(1));
        assert_eq!(t.admit("b", at(25)), Some(0));
    }
}
