//! Link flags of the fake library; it must not build anything else.
//!
//! nvml-wrapper dlcloses the library when its `Nvml` drops. The Rust runtime inside this cdylib
//! registers thread-local destructors, so unmapping it would leave glibc calling into unmapped
//! code when a thread exits (SIGSEGV in __nptl_deallocate_tsd, seen in the in-process tests).
//! `-z nodelete` keeps the library mapped after dlclose, as many real drivers' libraries are.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
