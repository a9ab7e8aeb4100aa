//! Namespace tests must fail loudly, never pass, where they cannot run. This test runs one of
//! them again as an unprivileged user and again without `/dev/net/tun`, and checks that it fails
//! with a message saying why.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// The kernel test binary built beside this one.
fn kernel_test_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap();
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("kernel-") && !name.contains('.')
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().expect("the kernel test binary is built by `cargo test -p weft-kernel`")
}

fn assert_fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().expect("run the kernel test binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the namespace test passed where it cannot run:\n{text}");
    assert!(text.contains(needle), "the failure does not say why ({needle:?}):\n{text}");
}

#[test]
fn namespace_tests_fail_with_a_reason_without_root() {
    weft_testbed::require_privileges().expect("this check itself runs as root");
    let bin = kernel_test_binary();
    assert_fails_with(
        Command::new(&bin).args(["--exact", "links_are_created_changed_and_deleted"]).uid(65534).gid(65534),
        "must run as root",
    );
}

#[test]
fn namespace_tests_fail_with_a_reason_without_dev_net_tun() {
    weft_testbed::require_privileges().expect("this check itself runs as root");
    let bin = kernel_test_binary();
    // A private mount namespace where /dev/net is an empty tmpfs: no tun device.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs none /dev/net && exec {} --exact links_are_created_changed_and_deleted",
        bin.display()
    );
    assert_fails_with(Command::new("unshare").args(["--mount", "sh", "-c", &script]), "/dev/net/tun cannot be opened");
}
