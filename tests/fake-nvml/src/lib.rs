//! A fake `libnvidia-ml.so` exporting the NVML C symbols migrun calls, backed by migrun's simulator; it must not be loaded outside tests.
