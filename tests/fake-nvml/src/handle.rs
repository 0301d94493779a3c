//! Opaque NVML handles of the fake: (kind, GPU, GI, CI) packed into a pointer-sized value; it must never be dereferenced.
//!
//! A tag in the top 16 bits lets the library reject NULL and garbage handles with
//! INVALID_ARGUMENT instead of trusting them. Whether the GI / CI behind a handle still exists is
//! checked against the simulated machine on every use, as a handle can outlive its instance.

/// Tag in bits 63..48 ("nv").
const MAGIC: u64 = 0x6e76;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A physical GPU (nvmlDevice_t).
    Device = 1,
    /// A MIG device (nvmlDevice_t for one compute instance).
    Mig = 2,
    /// nvmlGpuInstance_t.
    Gi = 3,
    /// nvmlComputeInstance_t.
    Ci = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub kind: Kind,
    pub gpu: u32,
    pub gi: u32,
    pub ci: u32,
}

impl Handle {
    pub fn device(gpu: u32) -> Handle {
        Handle {
            kind: Kind::Device,
            gpu,
            gi: 0,
            ci: 0,
        }
    }
    pub fn mig(gpu: u32, gi: u32, ci: u32) -> Handle {
        Handle {
            kind: Kind::Mig,
            gpu,
            gi,
            ci,
        }
    }
    pub fn gi(gpu: u32, gi: u32) -> Handle {
        Handle {
            kind: Kind::Gi,
            gpu,
            gi,
            ci: 0,
        }
    }
    pub fn ci(gpu: u32, gi: u32, ci: u32) -> Handle {
        Handle {
            kind: Kind::Ci,
            gpu,
            gi,
            ci,
        }
    }

    /// The pointer-sized value handed to the caller as `T*`.
    pub fn to_ptr<T>(self) -> *mut T {
        let v = (MAGIC << 48)
            | ((self.kind as u64) << 40)
            | (u64::from(self.gpu & 0xff) << 32)
            | (u64::from(self.gi & 0xffff) << 16)
            | u64::from(self.ci & 0xffff);
        // An integer disguised as a pointer: it is only ever compared and decoded, never dereferenced.
        v as usize as *mut T
    }

    /// Decode a handle the caller passed back; `None` for NULL or anything this library did not hand out.
    pub fn from_ptr<T>(p: *const T) -> Option<Handle> {
        let v = p as usize as u64;
        if v >> 48 != MAGIC {
            return None;
        }
        let kind = match (v >> 40) & 0xff {
            1 => Kind::Device,
            2 => Kind::Mig,
            3 => Kind::Gi,
            4 => Kind::Ci,
            _ => return None,
        };
        Some(Handle {
            kind,
            gpu: ((v >> 32) & 0xff) as u32,
            gi: ((v >> 16) & 0xffff) as u32,
            ci: (v & 0xffff) as u32,
        })
    }
}

// Handles need 64 bits; the fake is only built for 64-bit Linux, as NVML itself is.
const _: () = assert!(std::mem::size_of::<usize>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_garbage_is_rejected() {
        for h in [
            Handle::device(3),
            Handle::mig(1, 7, 0),
            Handle::gi(63, 14),
            Handle::ci(0, 2, 1),
        ] {
            assert_eq!(Handle::from_ptr(h.to_ptr::<u8>()), Some(h));
        }
        assert_eq!(Handle::from_ptr::<u8>(std::ptr::null()), None);
        assert_eq!(Handle::from_ptr(0x1234usize as *const u8), None);
        assert_eq!(
            Handle::from_ptr(((MAGIC << 48) | (9 << 40)) as usize as *const u8),
            None
        );
    }
}
