//! The first-come-first-served wait queue of `--wait`: tickets in the state dir, head-only allocation, the live progress line; it must not plan or touch the GPU.
//!
//! A waiter takes a ticket (`queue/<n>.json`, numbered under the allocation lock). Only the lowest
//! live ticket may allocate, so a small request that arrives later cannot starve a large one that
//! waits for a whole GPU. A ticket whose process died (pid gone, or reused with another start time)
//! is skipped, and removed by whoever next holds the lock.

use super::AllocRequest;
use crate::lease::{LeaseError, Registry, Ticket};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the head of the queue re-plans, and the others look at the queue.
const HEAD_POLL: Duration = Duration::from_millis(100);
const OTHER_POLL: Duration = Duration::from_millis(150);

/// `m:ss` (or `h:mm:ss`) for the progress line and messages.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One request's place in the queue; its ticket is removed when it is served, gives up or errors.
pub(super) struct Queue<'a> {
    reg: &'a Registry,
    req: &'a AllocRequest,
    ticket: Option<Ticket>,
    /// Some when stderr is a terminal: the last line shown and when.
    shown: Option<(String, Instant)>,
    tty: bool,
}

impl<'a> Queue<'a> {
    pub fn new(reg: &'a Registry, req: &'a AllocRequest) -> Queue<'a> {
        Queue {
            reg,
            req,
            ticket: None,
            shown: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn waits(&self) -> bool {
        self.req.wait.is_some()
    }

    pub fn has_ticket(&self) -> bool {
        self.ticket.is_some()
    }

    /// The wait is over (always, without `--wait`).
    pub fn expired(&self, started: Instant) -> bool {
        match self.req.wait {
            None => true,
            Some(None) => false,
            Some(Some(limit)) => started.elapsed() >= limit,
        }
    }

    fn count_ahead(&self, tickets: &[Ticket]) -> usize {
        let mine = self.ticket.as_ref().map(|t| t.ticket);
        tickets
            .iter()
            .filter(|t| mine.map_or(true, |m| t.ticket < m) && t.alive())
            .count()
    }

    /// Live tickets ahead of this request (all of them before it has a ticket). Needs no lock.
    pub fn ahead(&self) -> Result<usize, LeaseError> {
        Ok(self.count_ahead(&self.reg.tickets()?))
    }

    /// Like [`Queue::ahead`], and removes dead tickets; the caller holds the lock.
    pub fn ahead_locked(&self) -> Result<usize, LeaseError> {
        let tickets = self.reg.tickets()?;
        for t in &tickets {
            if !t.alive() {
                self.reg.remove_ticket(t.ticket)?;
            }
        }
        Ok(self.count_ahead(&tickets))
    }

    /// Take a ticket if this request has none yet; the caller holds the lock.
    pub fn enqueue(&mut self) -> Result<(), LeaseError> {
        if self.ticket.is_none() {
            self.ticket = Some(
                self.reg
                    .take_ticket(&self.req.want.to_string(), self.req.uid)?,
            );
        }
        Ok(())
    }

    /// Leave the queue and clear the progress line.
    pub fn done(&mut self) {
        if let Some(t) = self.ticket.take() {
            // Our own file; no lock needed to remove it, and a leftover would only be skipped as dead.
            let _ = self.reg.remove_ticket(t.ticket);
        }
        if self.shown.take().is_some() {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// Show `waiting for 3g.40gb: 2 ahead, 0:42` on a terminal, then sleep until the next look.
    pub fn pause(&mut self, started: Instant, ahead: usize) {
        if self.tty {
            let line = format!(
                "waiting for {}: {ahead} ahead, {}",
                self.req.want,
                clock(started.elapsed())
            );
            let stale = self.shown.as_ref().map_or(true, |(l, at)| {
                *l != line && at.elapsed() >= Duration::from_millis(200)
            });
            if stale {
                let mut err = std::io::stderr();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                self.shown = Some((line, Instant::now()));
            }
        }
        std::thread::sleep(if ahead == 0 { HEAD_POLL } else { OTHER_POLL });
    }
}

impl Drop for Queue<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_format() {
        assert_eq!(clock(Duration::from_secs(42)), "0:42");
        assert_eq!(clock(Duration::from_secs(125)), "2:05");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
