//! The launcher: builds the `docker run` argv, waits, forwards signals, releases; it must not allocate by itself.
