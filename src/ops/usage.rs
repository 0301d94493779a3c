//! `migrun usage`: slice-hours (lease time weighted by the memory slices of its instance), leases, waits and
//! refusals per user, profile or GPU, from the ledger's events; pure over the events it is given.

use crate::lease::ledger::{spans, Event, Refusal};
use serde::Serialize;
use std::collections::BTreeMap;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    User,
    Profile,
    Gpu,
}

/// A bad `--since`.
#[derive(Debug, thiserror::Error)]
#[error("bad --since {given:?}: expected a number followed by s, m, h, d or w (e.g. 7d, 12h, 90m)")]
pub struct SinceError {
    pub given: String,
}

impl crate::exit::ExitCodeOf for SinceError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

/// Parse `7d`, `12h`, `90m`, `3600s`, `2w` into seconds.
pub fn parse_since(s: &str) -> Result<u64, SinceError> {
    let err = || SinceError {
        given: s.to_string(),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// One row of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// The uid, profile name or GPU index; `-` for waits and refusals under `--by gpu` (they have no GPU).
    pub key: String,
    /// For `--by user`: the user name when the uid has one here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Lease seconds times memory slices, inside the window (exact: this is what `slice_hours` rounds).
    pub slice_seconds: u64,
    pub slice_hours: f64,
    /// Leases that overlap the window, and of those the ones still held.
    pub leases: u64,
    pub open: u64,
    pub waits: u64,
    pub wait_seconds: u64,
    pub refused_no_room: u64,
    pub refused_policy: u64,
    pub refused_unsatisfiable: u64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Window start and end (Unix seconds); `from` is 0 without `--since`.
    pub from: u64,
    pub to: u64,
    pub by: &'static str,
    pub rows: Vec<Row>,
    /// Ledger lines that did not parse (a line cut short by a full disk, or one from a newer migrun).
    pub skipped_lines: usize,
}

/// Build the report for the window `[from, to]` from the ledger's events.
pub fn report(events: &[Event], by: By, from: u64, to: u64, skipped_lines: usize) -> Report {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let key_of = |uid: u32, profile: &str, gpu: Option<u32>| match by {
        By::User => uid.to_string(),
        By::Profile => profile.to_string(),
        By::Gpu => gpu.map_or("-".to_string(), |g| g.to_string()),
    };
    for s in spans(events) {
        let start = s.lease.granted_at.max(from);
        let end = s.end.map_or(to, |(at, _)| at).min(to);
        if end < start || s.lease.granted_at > to {
            continue;
        }
        let r = rows
            .entry(key_of(s.lease.uid, &s.lease.profile, Some(s.lease.gpu)))
            .or_default();
        r.slice_seconds += u64::from(s.lease.slices) * (end - start);
        r.leases += 1;
        r.open += u64::from(s.end.is_none_or(|(at, _)| at > to));
    }
    for e in events.iter().filter(|e| e.at() >= from && e.at() <= to) {
        match e {
            Event::Wait {
                uid,
                want,
                waited_s,
                ..
            } => {
                let r = rows.entry(key_of(*uid, want, None)).or_default();
                r.waits += 1;
                r.wait_seconds += waited_s;
            }
            Event::Refusal {
                uid, want, reason, ..
            } => {
                let r = rows.entry(key_of(*uid, want, None)).or_default();
                match reason {
                    Refusal::NoRoom => r.refused_no_room += 1,
                    Refusal::Policy => r.refused_policy += 1,
                    Refusal::Unsatisfiable => r.refused_unsatisfiable += 1,
                }
            }
            _ => {}
        }
    }
    let rows = rows
        .into_iter()
        .map(|(key, mut r)| {
            r.slice_hours = (r.slice_seconds as f64 / 3600.0 * 1000.0).round() / 1000.0;
            if by == By::User {
                r.user = key
                    .parse::<u32>()
                    .ok()
                    .and_then(|u| nix::unistd::User::from_uid(u.into()).ok().flatten())
                    .map(|u| u.name);
            }
            r.key = key;
            r
        })
        .collect();
    Report {
        from,
        to,
        by: match by {
            By::User => "user",
            By::Profile => "profile",
            By::Gpu => "gpu",
        },
        rows,
        skipped_lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ledger::{EndReason, LeaseFacts};

    fn facts(id: u64, uid: u32, at: u64, slices: u32) -> LeaseFacts {
        LeaseFacts {
            id,
            granted_at: at,
            uid,
            gpu: 0,
            gpu_uuid: "GPU-0a".into(),
            profile: "1g.10gb".into(),
            slices,
            created: true,
        }
    }

    #[test]
    fn since_parses_units_and_refuses_the_rest() {
        assert_eq!(parse_since("7d").unwrap(), 604_800);
        assert_eq!(parse_since("90m").unwrap(), 5400);
        for bad in ["", "7", "d", "7y", "-1h", "99999999999999999999w"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_clip_spans_and_open_leases_count_to_now() {
        let ev = vec![
            Event::Grant {
                at: 100,
                lease: facts(1, 7, 100, 2),
            },
            Event::End {
                at: 400,
                lease: facts(1, 7, 100, 2),
                reason: EndReason::Released,
            },
            Event::Grant {
                at: 300,
                lease: facts(2, 7, 300, 4),
            },
            Event::Refusal {
                at: 350,
                uid: 8,
                want: "7g.80gb".into(),
                reason: Refusal::NoRoom,
            },
        ];
        let r = report(&ev, By::User, 0, 1000, 0);
        assert_eq!(r.rows[0].slice_seconds, 2 * 300 + 4 * 700);
        assert_eq!((r.rows[0].leases, r.rows[0].open), (2, 1));
        assert_eq!(r.rows[1].refused_no_room, 1);
        let r = report(&ev, By::User, 350, 1000, 0);
        assert_eq!(r.rows[0].slice_seconds, 2 * 50 + 4 * 650);
    }
}
