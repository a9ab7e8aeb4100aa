//! `weft demo` end to end: it brings the cluster up with a router per host and pods attached by
//! weft-cni, shows traffic and status, and leaves nothing behind (root needed).

use std::process::Command;

#[test]
fn the_demo_runs_and_cleans_up() {
    weft_fastpath::testbed::require_privileges().expect("the demo needs root");
    let out = Command::new(env!("CARGO_BIN_EXE_weft")).arg("demo").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for needle in ["pods (attached by weft-cni): a-pod1 10.32.", "weft status (on a):", "IPAM: ready", "torn down"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Pods of one host reach each other: the a-pod1 row has "ok" under a-pod2.
    let row = text.lines().find(|l| l.trim_start().starts_with("a-pod1") && l.contains('·')).unwrap();
    assert!(row.split_whitespace().nth(2) == Some("ok"), "{row}");
    let left: Vec<String> = weft_fastpath::netns::list().unwrap().into_iter().filter(|n| n.starts_with("weft-demo-")).collect();
    assert!(left.is_empty(), "{left:?}");
}
