//! Unit tests of the NVML backend's pure parts.
use super::errors::code_of;
use super::*;

#[test]
fn missing_library_is_no_driver_naming_the_library() {
    let e = NvmlBackend::open(PathBuf::from("/nonexistent/libnvidia-ml.so.1"))
        .err()
        .expect("no library there");
    let msg = e.to_string();
    assert!(matches!(e, GpuError::NoDriver { .. }), "{msg}");
    assert!(msg.contains("/nonexistent/libnvidia-ml.so.1"), "{msg}");
    assert!(msg.contains("--simulate"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn nvml_errors_keep_their_codes() {
    assert_eq!(code_of(&NvmlError::InUse), Code::InUse);
    assert_eq!(
        code_of(&NvmlError::InsufficientSize(None)),
        Code::InsufficientSize
    );
    assert_eq!(
        code_of(&NvmlError::UnexpectedVariant(23)),
        Code::InsufficientResources
    );
    assert_eq!(code_of(&NvmlError::UnexpectedVariant(25)), Code::Unknown);
    assert_eq!(
        code_of(&NvmlError::FailedToLoadSymbol("x".into())),
        Code::FunctionNotFound
    );
    assert!(matches!(
        nvml_err("creating a GPU instance", 0, NvmlError::NoPermission),
        GpuError::NoPermission { .. }
    ));
}
