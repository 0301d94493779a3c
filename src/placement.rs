//! Pure placement policy: (snapshot, request) -> plan, plus the first-fit baseline; it must not do I/O.
