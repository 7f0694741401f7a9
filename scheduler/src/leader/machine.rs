//! The election's decisions, apart from the store: what this scheduler is, and what to do
//! next, from what the store last answered. The loop in `leader.rs` only does the calls.
//!
//! The one rule that keeps two leaders from acting at once: a leader counts its lease as
//! alive only until `ttl` after it *sent* the last renewal that succeeded (the server
//! renewed it later than that, so it lives at least as long), less a margin for the two
//! clocks, and steps down then, whether or not the store has answered.

use std::time::Duration;

use tokio::time::Instant;

use super::Role;
use crate::store::Revision;

/// What the store answered, as the machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Our put_if created the leadership key at `revision`; the lease was asked for at `sent`.
    Won { revision: Revision, sent: Instant },
    /// Another holds the key (its address, when its value says).
    Held { leader: Option<String> },
    /// The key is gone (its holder's lease ended), or the watch on it lapsed: look again.
    Vacant,
    /// A renewal sent at `sent` succeeded.
    Renewed { sent: Instant },
    /// A renewal failed; `lease_gone`: the store says the lease is no more.
    RenewFailed { lease_gone: bool, now: Instant },
    /// The store did not answer a campaign.
    Unreachable,
}

/// What the loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the key and, when it is free, try to take it, after `after`.
    Campaign { after: Duration },
    /// Wait for the key to change.
    Follow,
    /// Renew the lease at `at`, giving up on that renewal at `deadline`.
    Renew { at: Instant, deadline: Instant },
    /// No longer leader (already said): revoke the lease, best effort, and campaign.
    StepDown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Candidate,
    Following {
        leader: Option<String>,
    },
    Leading {
        revision: Revision,
        renewed: Instant,
    },
}

#[derive(Debug)]
pub struct Machine {
    ttl: Duration,
    state: State,
}

impl Machine {
    pub fn new(ttl: Duration) -> Machine {
        Machine {
            ttl,
            state: State::Candidate,
        }
    }

    pub fn role(&self) -> Role {
        match &self.state {
            State::Candidate => Role::Follower { leader: None },
            State::Following { leader } => Role::Follower {
                leader: leader.clone(),
            },
            State::Leading { revision, .. } => Role::Leader {
                revision: *revision,
            },
        }
    }

    /// Pause between tries while the store does not answer.
    fn retry(&self) -> Duration {
        self.ttl / 6
    }

    /// When a leader last renewed at `renewed` stops counting itself leader.
    fn deadline(&self, renewed: Instant) -> Instant {
        renewed + self.ttl - self.ttl / 6
    }

    fn renew(&self, renewed: Instant) -> Next {
        Next::Renew {
            at: renewed + self.ttl / 3,
            deadline: self.deadline(renewed),
        }
    }

    pub fn on(&mut self, event: Event) -> Next {
        if let State::Leading { revision, renewed } = &self.state {
            let (revision, renewed) = (*revision, *renewed);
            return match event {
                Event::Renewed { sent } => {
                    // A late answer never moves the deadline back.
                    let renewed = sent.max(renewed);
                    self.state = State::Leading { revision, renewed };
                    self.renew(renewed)
                }
                Event::RenewFailed { lease_gone, now } => {
                    let deadline = self.deadline(renewed);
                    if lease_gone || now >= deadline {
                        self.state = State::Candidate;
                        Next::StepDown
                    } else {
                        Next::Renew {
                            at: (now + self.retry()).min(deadline),
                            deadline,
                        }
                    }
                }
                // A leader watches nothing: its lease is its word. Should anything else
                // arrive, keep renewing.
                _ => self.renew(renewed),
            };
        }
        match event {
            Event::Won { revision, sent } => {
                self.state = State::Leading {
                    revision,
                    renewed: sent,
                };
                self.renew(sent)
            }
            Event::Held { leader } => {
                self.state = State::Following { leader };
                Next::Follow
            }
            Event::Vacant => {
                self.state = State::Candidate;
                Next::Campaign {
                    after: Duration::ZERO,
                }
            }
            Event::Unreachable => {
                self.state = State::Candidate;
                Next::Campaign {
                    after: self.retry(),
                }
            }
            // Answers for a lease no longer held.
            Event::Renewed { .. } | Event::RenewFailed { .. } => Next::Campaign {
                after: Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn s(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    fn leader_since(t0: Instant) -> Machine {
        let mut m = Machine::new(TTL);
        m.on(Event::Won {
            revision: 7,
            sent: t0,
        });
        m
    }

    #[test]
    fn a_candidate_is_a_follower_without_a_known_leader() {
        assert_eq!(Machine::new(TTL).role(), Role::Follower { leader: None });
    }

    #[test]
    fn winning_makes_a_leader_that_renews_at_a_third_of_the_ttl() {
        let t0 = Instant::now();
        let mut m = Machine::new(TTL);
        let next = m.on(Event::Won {
            revision: 7,
            sent: t0,
        });
        assert_eq!(m.role(), Role::Leader { revision: 7 });
        assert_eq!(
            next,
            Next::Renew {
                at: t0 + s(1.0),
                deadline: t0 + s(2.5)
            }
        );
    }

    #[test]
    fn a_renewal_counts_from_when_it_was_sent() {
        let t0 = Instant::now();
        let mut m = leader_since(t0);
        let next = m.on(Event::Renewed { sent: t0 + s(1.0) });
        assert_eq!(
            next,
            Next::Renew {
                at: t0 + s(2.0),
                deadline: t0 + s(3.5)
            }
        );
        assert_eq!(m.role(), Role::Leader { revision: 7 });
    }

    #[test]
    fn a_lease_the_store_no_longer_knows_steps_down_at_once() {
        let t0 = Instant::now();
        let mut m = leader_since(t0);
        let next = m.on(Event::RenewFailed {
            lease_gone: true,
            now: t0 + s(1.0),
        });
        assert_eq!(next, Next::StepDown);
        assert_eq!(m.role(), Role::Follower { leader: None });
    }

    #[test]
    fn an_unreachable_store_is_retried_until_the_deadline_then_the_leader_steps_down() {
        let t0 = Instant::now();
        let mut m = leader_since(t0);
        let next = m.on(Event::RenewFailed {
            lease_gone: false,
            now: t0 + s(1.0),
        });
        assert_eq!(
            next,
            Next::Renew {
                at: t0 + s(1.5),
                deadline: t0 + s(2.5)
            }
        );
        assert!(m.role().is_leader());
        // The last retry is at the deadline, not past it.
        let next = m.on(Event::RenewFailed {
            lease_gone: false,
            now: t0 + s(2.2),
        });
        assert_eq!(
            next,
            Next::Renew {
                at: t0 + s(2.5),
                deadline: t0 + s(2.5)
            }
        );
        let next = m.on(Event::RenewFailed {
            lease_gone: false,
            now: t0 + s(2.5),
        });
        assert_eq!(next, Next::StepDown);
        assert!(!m.role().is_leader());
    }

    #[test]
    fn the_deadline_comes_before_the_server_could_end_the_lease() {
        // The server renews after the renewal is sent, so its lease ends no sooner than
        // sent + ttl: a leader steps down strictly before that, with room for clock drift.
        let t0 = Instant::now();
        let mut m = leader_since(t0);
        let Next::Renew { deadline, .. } = m.on(Event::Renewed { sent: t0 + s(1.0) }) else {
            panic!("a leader renews");
        };
        assert!(deadline + s(0.4) < t0 + s(1.0) + TTL);
    }

    #[test]
    fn a_late_answer_never_moves_the_deadline_back() {
        let t0 = Instant::now();
        let mut m = leader_since(t0);
        m.on(Event::Renewed { sent: t0 + s(2.0) });
        let next = m.on(Event::Renewed { sent: t0 + s(1.0) });
        assert_eq!(
            next,
            Next::Renew {
                at: t0 + s(3.0),
                deadline: t0 + s(4.5)
            }
        );
    }

    #[test]
    fn a_follower_follows_the_holder_and_campaigns_when_the_key_is_gone() {
        let mut m = Machine::new(TTL);
        let held = Event::Held {
            leader: Some("10.0.0.2:8001".into()),
        };
        assert_eq!(m.on(held), Next::Follow);
        assert_eq!(
            m.role(),
            Role::Follower {
                leader: Some("10.0.0.2:8001".into())
            }
        );
        assert_eq!(
            m.on(Event::Vacant),
            Next::Campaign {
                after: Duration::ZERO
            }
        );
        assert_eq!(m.role(), Role::Follower { leader: None });
    }

    #[test]
    fn an_unreachable_store_makes_a_candidate_try_again_later() {
        let mut m = Machine::new(TTL);
        m.on(Event::Held { leader: None });
        assert_eq!(m.on(Event::Unreachable), Next::Campaign { after: s(0.5) });
        assert_eq!(m.role(), Role::Follower { leader: None });
    }

    #[test]
    fn a_leader_ignores_what_only_a_follower_hears() {
        let t0 = Instant::now();
        let mut m = leader_since(t0);
        for event in [
            Event::Vacant,
            Event::Held { leader: None },
            Event::Unreachable,
        ] {
            assert!(matches!(m.on(event), Next::Renew { .. }));
            assert_eq!(m.role(), Role::Leader { revision: 7 });
        }
    }
}
