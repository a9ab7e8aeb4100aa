//! The commands: ADD, DEL, CHECK, STATUS, GC. Netlink inside the pod's namespace goes through a
//! socket opened in that namespace on a dedicated thread (see `weft_kernel::netns`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde_json::Value;
use weft_api::types::{AllocateRequest, Allocation, Attachment, GcRequest, ReleaseRequest, Status};
use weft_api::{Client, ClientError};
use weft_kernel::netlink::Route;
use weft_kernel::{Handle, NetNs};

use crate::spec::{self, Attached, CniError, Env, NetConf, code};

fn kernel(what: &str) -> impl Fn(weft_kernel::Error) -> CniError + '_ {
    move |e| CniError::caused(code::IO, what, &e, "")
}

/// Maps an API failure to the CNI code a runtime acts on.
fn api(what: &'static str) -> impl Fn(ClientError) -> CniError {
    move |e| match e {
        ClientError::NotRunning { .. } => CniError::caused(code::TRY_AGAIN, what, &e, "the weft router on this node is not running yet; the runtime will retry"),
        ClientError::Refused { status: 503, .. } => CniError::caused(code::TRY_AGAIN, what, &e, ""),
        ClientError::PermissionDenied { .. } => {
            CniError::caused(code::IO, what, &e, "the container runtime runs weft-cni as root; a plugin run by another user cannot reach the router")
        }
        _ => CniError::caused(code::IO, what, &e, ""),
    }
}

/// The host end's name: stable for an attachment, at most 15 bytes.
pub(crate) fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across releases and platforms, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("vw{:012x}", h & 0xffff_ffff_ffff)
}

/// Refuses a `CNI_NETNS` that is the plugin's or the host's own namespace: the pod interface
/// would be made (or, on DEL, deleted) among the host's interfaces.
fn check_netns(env: &Env) -> Result<(), CniError> {
    match spec::forbidden_netns(&env.netns) {
        Some(which) => Err(CniError::new(
            code::BAD_ENVIRONMENT,
            format!("CNI_NETNS {} is {which}", env.netns),
            "a pod needs a network namespace of its own; check what the runtime passes",
        )),
        None => Ok(()),
    }
}

fn open_netns(env: &Env) -> Result<NetNs, CniError> {
    check_netns(env)?;
    NetNs::open_path(Path::new(&env.netns), &env.netns).map_err(|e| {
        CniError::new(code::BAD_ENVIRONMENT, format!("CNI_NETNS {} cannot be opened", env.netns), weft_kernel::chain(&e))
    })
}

fn attachment(env: &Env) -> Attachment {
    Attachment { container_id: env.container_id.clone(), ifname: env.ifname.clone() }
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), CniError> {
    let bad = || CniError::new(code::IO, format!("the router returned a malformed address {s:?}"), "");
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, l.parse().ok().filter(|l: &u8| *l <= 32).ok_or_else(bad)?))
}

fn mac_text(m: Option<[u8; 6]>) -> Option<String> {
    m.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

/// ADD: veth into the pod, address from IPAM, routes, MTU; everything undone on failure.
pub(crate) fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    env.check_container_id()?;
    env.require("CNI_NETNS", &env.netns)?;
    env.check_ifname()?;
    let ns = open_netns(env)?;
    let mut pod = Handle::open_in(&ns).map_err(kernel("open netlink in the pod namespace"))?;
    if pod.find_link(&env.ifname).map_err(kernel("look up the pod interface"))?.is_some() {
        return Err(CniError::new(
            code::BAD_ENVIRONMENT,
            format!("interface {} already exists in {}", env.ifname, env.netns),
            "this attachment was added already; DEL it first",
        ));
    }
    let mut host = Handle::open().map_err(kernel("open netlink"))?;
    let bridge = host.find_link(&conf.bridge).map_err(kernel("look up the bridge"))?.ok_or_else(|| {
        CniError::new(code::TRY_AGAIN, format!("bridge {} does not exist", conf.bridge), "the weft router creates it when it starts; the runtime will retry")
    })?;

    let client = Client::new(&conf.api_socket);
    let alloc: Allocation = client.post("/ipam/allocate", &AllocateRequest { attachment: attachment(env) }).map_err(api("allocate an address"))?;
    let host_if = host_ifname(&env.container_id, &env.ifname);
    match plumb(env, conf, &ns, &mut pod, &mut host, &host_if, &alloc) {
        Ok((host_mac, pod_mac)) => {
            let a = Attached {
                bridge: conf.bridge.clone(),
                bridge_mac: mac_text(bridge.mac),
                host_if,
                host_mac,
                pod_if: env.ifname.clone(),
                pod_mac,
                sandbox: env.netns.clone(),
                address: alloc.address.clone(),
                gateway: alloc.gateway.clone(),
                mtu: alloc.mtu,
            };
            Ok(spec::result(&conf.cni_version, &a))
        }
        Err(e) => {
            // Undo: the veth pair (both ends go with one), then the address.
            let _ = host.delete_link_if_exists(&host_if);
            let _ = client.post::<_, Value>("/ipam/release", &ReleaseRequest { attachment: attachment(env) });
            Err(e)
        }
    }
}

fn plumb(
    env: &Env,
    conf: &NetConf,
    ns: &NetNs,
    pod: &mut Handle,
    host: &mut Handle,
    host_if: &str,
    alloc: &Allocation,
) -> Result<(Option<String>, Option<String>), CniError> {
    let (addr, prefix) = parse_cidr(&alloc.address)?;
    // A host end left by an ADD that crashed half-way: its pod end is gone with its namespace.
    host.delete_link_if_exists(host_if).map_err(kernel("remove a stale host interface"))?;
    host.add_veth_pair_into(host_if, &env.ifname, ns).map_err(kernel("create the veth pair"))?;
    host.set_mtu(host_if, alloc.mtu).map_err(kernel("set the host interface MTU"))?;
    host.set_master(host_if, &conf.bridge).map_err(kernel("attach the host interface to the bridge"))?;
    host.set_hairpin(host_if, conf.hairpin).map_err(kernel("set hairpin mode"))?;
    host.set_up(host_if).map_err(kernel("bring the host interface up"))?;
    // The pod's UDP reaches the router coalesced (weft_kernel::offload) from the start when the
    // configuration asks (the router writes it with `--pod-udp-coalesce-above 0`; by default it
    // holds a pod's UDP itself, once the pod sends fast).
    // Only a speed-up: a kernel without UDP GRO forwarding (before 5.11) still gets a working pod.
    if let Some(timeout) = conf.udp_coalesce()
        && let Err(e) = host.set_pod_udp_coalescing(host_if, Some(timeout))
    {
        eprintln!("weft-cni: {host_if}: UDP from the pod is not coalesced: {}", weft_kernel::chain(&e));
    }

    pod.set_mtu(&env.ifname, alloc.mtu).map_err(kernel("set the pod interface MTU"))?;
    pod.add_address(&env.ifname, IpAddr::V4(addr), prefix).map_err(kernel("add the pod address"))?;
    // The kernel announces the address (gratuitous ARP) when the link comes up.
    ns.set_sysctl(&format!("net/ipv4/conf/{}/arp_notify", env.ifname), "1").map_err(kernel("enable arp_notify"))?;
    pod.set_up(&env.ifname).map_err(kernel("bring the pod interface up"))?;
    if let Some(gw) = &alloc.gateway {
        let gw: Ipv4Addr = gw.parse().map_err(|_| CniError::new(code::IO, format!("the router returned a malformed gateway {gw:?}"), ""))?;
        pod.add_route(&Route::default_via(IpAddr::V4(gw))).map_err(kernel("add the default route"))?;
    }
    let host_mac = mac_text(host.link(host_if).map_err(kernel("read the host interface"))?.mac);
    let pod_mac = mac_text(pod.link(&env.ifname).map_err(kernel("read the pod interface"))?.mac);
    Ok((host_mac, pod_mac))
}

/// DEL: release the address, remove the interface; succeeds when either is gone already.
pub(crate) fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.check_container_id()?;
    env.check_ifname()?;
    if !env.netns.is_empty() {
        check_netns(env)?;
    }
    let client = Client::new(&conf.api_socket);
    client.post::<_, Value>("/ipam/release", &ReleaseRequest { attachment: attachment(env) }).map_err(api("release the address"))?;
    if !env.netns.is_empty() {
        if let Ok(ns) = NetNs::open_path(Path::new(&env.netns), &env.netns) {
            let mut pod = Handle::open_in(&ns).map_err(kernel("open netlink in the pod namespace"))?;
            pod.delete_link_if_exists(&env.ifname).map_err(kernel("delete the pod interface"))?;
        }
    }
    let mut host = Handle::open().map_err(kernel("open netlink"))?;
    host.delete_link_if_exists(&host_ifname(&env.container_id, &env.ifname)).map_err(kernel("delete the host interface"))?;
    Ok(())
}

/// CHECK: interface, address, route and allocation still as prevResult says.
pub(crate) fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.check_container_id()?;
    env.require("CNI_NETNS", &env.netns)?;
    env.check_ifname()?;
    check_netns(env)?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult", "the runtime passes the ADD result as prevResult"))?;
    let want = prev["ips"][0]["address"].as_str().ok_or_else(|| CniError::new(code::INVALID_CONFIG, "prevResult has no ips[0].address", ""))?;
    let (addr, prefix) = parse_cidr(want)?;
    let fail = |what: String| Err(CniError::new(code::IO, what, "DEL and ADD the attachment again"));

    let client = Client::new(&conf.api_socket);
    let alloc: Allocation = client.post("/ipam/lookup", &AllocateRequest { attachment: attachment(env) }).map_err(api("look up the allocation"))?;
    if alloc.address != want {
        return fail(format!("IPAM has {} for this attachment, prevResult says {want}", alloc.address));
    }
    let ns = open_netns(env)?;
    let mut pod = Handle::open_in(&ns).map_err(kernel("open netlink in the pod namespace"))?;
    let Some(link) = pod.find_link(&env.ifname).map_err(kernel("look up the pod interface"))? else {
        return fail(format!("interface {} is missing from {}", env.ifname, env.netns));
    };
    if !link.up {
        return fail(format!("interface {} is down", env.ifname));
    }
    let addrs = pod.addresses(&env.ifname).map_err(kernel("list the pod addresses"))?;
    if !addrs.contains(&(IpAddr::V4(addr), prefix)) {
        return fail(format!("interface {} lacks {want}", env.ifname));
    }
    if let Some(gw) = &alloc.gateway {
        let routes = pod.routes().map_err(kernel("list the pod routes"))?;
        if !routes.iter().any(|r| r.prefix_len == 0 && r.via.map(|v| v.to_string()).as_deref() == Some(gw.as_str())) {
            return fail(format!("the default route via {gw} is missing"));
        }
    }
    let mut host = Handle::open().map_err(kernel("open netlink"))?;
    let host_if = host_ifname(&env.container_id, &env.ifname);
    let bridge = host.find_link(&conf.bridge).map_err(kernel("look up the bridge"))?;
    match (host.find_link(&host_if).map_err(kernel("look up the host interface"))?, bridge) {
        (Some(h), Some(b)) if h.master == Some(b.index) => Ok(()),
        _ => fail(format!("host interface {host_if} is missing or not on bridge {}", conf.bridge)),
    }
}

/// STATUS: ready when the router answers and IPAM can allocate.
pub(crate) fn status(conf: &NetConf) -> Result<(), CniError> {
    let client = Client::new(&conf.api_socket).with_timeout(std::time::Duration::from_secs(5));
    let s: Status = client.get("/status").map_err(|e| CniError::caused(code::NOT_AVAILABLE, "weft is not available", &e, ""))?;
    if s.ipam.state != "ready" {
        return Err(CniError::new(code::NOT_AVAILABLE, format!("weft IPAM is {}: {}", s.ipam.state, s.ipam.detail), ""));
    }
    Ok(())
}

/// GC: release every allocation the runtime no longer lists.
pub(crate) fn gc(conf: &NetConf) -> Result<(), CniError> {
    let list = conf.valid_attachments.as_ref().or(conf.attachments.as_ref()).ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments", "the runtime lists the attachments that still exist")
    })?;
    let keep = list.iter().map(|a| Attachment { container_id: a.container_id.clone(), ifname: a.ifname.clone() }).collect();
    Client::new(&conf.api_socket).post::<_, Value>("/ipam/gc", &GcRequest { keep }).map_err(api("garbage-collect allocations"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_are_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 14);
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
        assert_ne!(a, host_ifname("0123456789abcdee", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
    }
}
