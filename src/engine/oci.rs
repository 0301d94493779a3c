//! OCI state/config parsing, spec modifiers (env, hooks, annotations) and hook entry points; it must not lose unknown JSON fields.
