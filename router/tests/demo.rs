//! `weft demo` end to end: it brings the cluster up with a meshed router per host and pods
//! attached by weft-cni, shows every pod reaching every pod, a relayed TCP transfer and status,
//! and leaves nothing behind (root needed).

mod common;

use std::process::Command;

#[test]
fn the_demo_runs_and_cleans_up() {
    weft_testbed::require_privileges().expect("the demo needs root");
    common::weft_cni(); // `weft demo` runs the plugin beside itself
    let out = Command::new(common::weft()).arg("demo").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for needle in ["pods (attached by weft-cni): a-pod1 10.", "weft status (on a):", "IPAM: ready", "Encryption: enabled", "(relayed by b, encrypted)", "(c)  via ", "torn down"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Every pod reaches every other pod, across hosts: the ping matrix is all "ok".
    let title = text.find("pods: ping from each pod").expect("the pod matrix");
    let rows: Vec<&str> = text[title..].lines().skip(2).take_while(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 8, "{text}");
    for row in rows {
        assert!(row.split_whitespace().skip(1).all(|c| c == "ok" || c == "·"), "{row}\n{text}");
    }
    let left: Vec<String> = weft_kernel::netns::list().unwrap().into_iter().filter(|n| n.starts_with("weft-demo-")).collect();
    assert!(left.is_empty(), "{left:?}");
}
