//! Host plumbing: the bridge `weft` and the TAP `weft-tap` on it, created idempotently and
//! repaired when someone changes or deletes them.
//!
//! The TAP port is isolated on the bridge (and so is the VXLAN port, when the fast path adds
//! it): frames never pass between the two overlays, so they cannot loop between hosts.

use weft_kernel::netlink::LinkKind;
use weft_kernel::{Error, Handle};

/// Names and sizes of the host's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Devices {
    /// The pod bridge (`weft`).
    pub bridge: String,
    /// The router's TAP (`weft-tap`).
    pub tap: String,
    /// The MTU pods get (`--mtu`, by default [`DEFAULT_MTU`](crate::daemon::DEFAULT_MTU)), set
    /// on the bridge and the TAP.
    pub mtu: u32,
}

impl Default for Devices {
    fn default() -> Self {
        Devices { bridge: "weft".into(), tap: "weft-tap".into(), mtu: crate::daemon::DEFAULT_MTU }
    }
}

/// What [`ensure`] had to change; empty when everything was already right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs(pub Vec<String>);

/// Makes the bridge exist and be up, and the TAP (which the caller keeps open) be attached to
/// it, isolated, up, with the configured MTU. Fails with [`Error::NoSuchLink`] for the TAP if it
/// is gone (someone deleted it): the caller reopens it and calls again.
pub fn ensure(nl: &mut Handle, dev: &Devices) -> Result<Repairs, Error> {
    let mut done = Vec::new();
    let bridge = match nl.find_link(&dev.bridge)? {
        Some(b) => b,
        None => {
            nl.add_link(&dev.bridge, &LinkKind::Bridge)?;
            done.push(format!("created bridge {}", dev.bridge));
            nl.link(&dev.bridge)?
        }
    };
    if !bridge.up {
        nl.set_up(&dev.bridge)?;
        done.push(format!("set bridge {} up", dev.bridge));
    }
    let tap = nl.link(&dev.tap)?;
    if tap.mtu != dev.mtu {
        nl.set_mtu(&dev.tap, dev.mtu)?;
        done.push(format!("set MTU of {} to {}", dev.tap, dev.mtu));
    }
    if tap.master != Some(bridge.index) {
        nl.set_master(&dev.tap, &dev.bridge)?;
        done.push(format!("attached {} to {}", dev.tap, dev.bridge));
    }
    // The kernel reports port flags only for attached ports; read them again after attaching.
    let tap = nl.link(&dev.tap)?;
    if tap.isolated != Some(true) {
        nl.set_isolated(&dev.tap, true)?;
        done.push(format!("isolated {} on {}", dev.tap, dev.bridge));
    }
    if !tap.up {
        nl.set_up(&dev.tap)?;
        done.push(format!("set {} up", dev.tap));
    }
    Ok(Repairs(done))
}
