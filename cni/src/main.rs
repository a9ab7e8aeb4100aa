//! `weft-cni`: the CNI plugin (type `weft-cni`) through which container runtimes attach pods to
//! weft: spec 0.4.0, 1.0.0 and 1.1.0; ADD, DEL, CHECK, STATUS, GC and VERSION.
//!
//! It reads `CNI_*` from the environment and the network configuration from stdin (at most
//! 1 MiB), and answers on stdout in the version it was given (errors as the spec's error JSON,
//! exit status 1). The container ID and interface name are checked as the spec defines them,
//! and a `CNI_NETNS` that is the plugin's own or the host's namespace is refused. It
//! must start and finish fast: it links neither tokio nor quinn, reaches the router over its
//! unix socket with a blocking client, and does netlink itself.

mod plugin;
mod spec;

use std::io::Read;
use std::process::ExitCode;

use spec::{CniError, Env, NetConf, code};

/// The largest network configuration read from stdin.
const MAX_STDIN: usize = 1 << 20;

fn main() -> ExitCode {
    let env = Env::read(|k| std::env::var(k).ok());
    let stdin = match read_stdin(std::io::stdin().lock()) {
        Ok(b) => b,
        Err(err) => {
            println!("{}", err.to_json(spec::NEWEST));
            return ExitCode::FAILURE;
        }
    };
    let (version, outcome) = run(&env, &stdin);
    match outcome {
        Ok(Some(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// Reads at most [`MAX_STDIN`] bytes; more is a decode error (code 6), and the rest is not read.
fn read_stdin(r: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    r.take(MAX_STDIN as u64 + 1).read_to_end(&mut buf).map_err(|e| CniError::new(code::IO, "cannot read stdin", e.to_string()))?;
    if buf.len() > MAX_STDIN {
        return Err(CniError::new(
            code::DECODE,
            "cannot decode the network configuration on stdin: it is larger than 1 MiB",
            "a weft network configuration is a few hundred bytes; check what the runtime passes",
        ));
    }
    Ok(buf)
}

/// Runs one invocation: the version to answer in, and the result body (if any) or the error.
fn run(env: &Env, stdin: &[u8]) -> (String, Result<Option<serde_json::Value>, CniError>) {
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (spec::NEWEST.into(), Err(e)),
    };
    let version = conf.cni_version.clone();
    if env.command != "VERSION" && !spec::SUPPORTED.contains(&version.as_str()) {
        let e = CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {version} is not supported"),
            format!("weft-cni speaks {}", spec::SUPPORTED.join(", ")),
        );
        return (spec::NEWEST.into(), Err(e));
    }
    let outcome = match env.command.as_str() {
        "VERSION" => Ok(Some(spec::version_result(&version))),
        "ADD" => plugin::add(env, &conf).map(Some),
        "DEL" => plugin::del(env, &conf).map(|()| None),
        "CHECK" => plugin::check(env, &conf).map(|()| None),
        "STATUS" => plugin::status(&conf).map(|()| None),
        "GC" => plugin::gc(&conf).map(|()| None),
        "" => Err(CniError::new(code::BAD_ENVIRONMENT, "CNI_COMMAND is not set", "set it to ADD, DEL, CHECK, STATUS, GC or VERSION")),
        other => Err(CniError::new(code::BAD_ENVIRONMENT, format!("unknown CNI_COMMAND {other:?}"), "expected ADD, DEL, CHECK, STATUS, GC or VERSION")),
    };
    (version, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn invoke(vars: &[(&str, &str)], stdin: &str) -> (String, Result<Option<Value>, CniError>) {
        let env = Env::read(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()));
        run(&env, stdin.as_bytes())
    }

    #[test]
    fn version_answers_in_the_requested_version() {
        let (_, r) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        let v = r.unwrap().unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        let (_, r) = invoke(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(r.unwrap().unwrap()["cniVersion"], "1.1.0");
    }

    #[test]
    fn bad_invocations_get_the_spec_codes() {
        // (environment, stdin, expected code, text the message must contain)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u32, &'a str);
        let cases: &[Case<'_>] = &[
            (&[("CNI_COMMAND", "ADD")], "{not json", code::DECODE, "decode"),
            (&[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"0.3.1"}"#, code::INCOMPATIBLE_VERSION, "0.3.1"),
            (&[], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "CNI_COMMAND"),
            (&[("CNI_COMMAND", "FROB")], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "FROB"),
            (&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "CNI_CONTAINERID"),
            (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "CNI_NETNS"),
            (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/x")], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "CNI_IFNAME"),
            (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "a-very-long-ifname")], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "not a valid interface name"),
            (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/nonexistent/netns"), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0"}"#, code::BAD_ENVIRONMENT, "cannot be opened"),
            (&[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0"}"#, code::INVALID_CONFIG, "prevResult"),
            (&[("CNI_COMMAND", "GC")], r#"{"cniVersion":"1.1.0"}"#, code::INVALID_CONFIG, "valid-attachments"),
            (&[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"1.0.0","udpCoalesceMicros":5000}"#, code::INVALID_CONFIG, "udpCoalesceMicros 5000"),
            (&[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"1.0.0","udpCoalesceMicros":-1}"#, code::DECODE, "decode"),
            (&[("CNI_COMMAND", "STATUS")], r#"{"cniVersion":"1.1.0","apiSocket":"/nonexistent/weft.sock"}"#, code::NOT_AVAILABLE, "not running"),
            (&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0","apiSocket":"/nonexistent/weft.sock"}"#, code::TRY_AGAIN, "not running"),
        ];
        for (vars, stdin, want, needle) in cases {
            let (_, r) = invoke(vars, stdin);
            let e = r.expect_err(stdin);
            assert_eq!(e.code, *want, "{vars:?} {stdin}: {e:?}");
            assert!(format!("{} {}", e.msg, e.details).contains(needle), "{e:?} should mention {needle}");
        }
    }

    #[test]
    fn udp_coalescing_is_off_unless_the_configuration_asks_and_zero_turns_it_off() {
        let conf = |text: &str| crate::spec::NetConf::parse(text.as_bytes()).unwrap().udp_coalesce();
        assert_eq!(conf("{}"), None);
        assert_eq!(conf(r#"{"udpCoalesceMicros":50}"#), Some(std::time::Duration::from_micros(50)));
        assert_eq!(conf(r#"{"udpCoalesceMicros":0}"#), None);
    }

    #[test]
    fn stdin_is_read_up_to_one_mib() {
        let conf = br#"{"cniVersion":"1.0.0"}"#;
        assert_eq!(read_stdin(&conf[..]).unwrap(), conf);
        let exact = vec![b' '; MAX_STDIN];
        assert_eq!(read_stdin(&exact[..]).unwrap().len(), MAX_STDIN);
        // An endless stdin (like /dev/zero) is refused after 1 MiB + 1 byte, not read to its end.
        let e = read_stdin(std::io::repeat(0)).unwrap_err();
        assert_eq!(e.code, code::DECODE, "{e:?}");
        assert!(e.msg.contains("larger than 1 MiB"), "{e:?}");
    }

    #[test]
    fn container_ids_and_interface_names_follow_the_spec() {
        let add = |id: &str, ifname: &str| {
            let (_, r) = invoke(
                &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", id), ("CNI_NETNS", "/nonexistent/netns"), ("CNI_IFNAME", ifname)],
                r#"{"cniVersion":"1.0.0"}"#,
            );
            r.unwrap_err()
        };
        // Valid ones get as far as opening the (missing) namespace.
        for id in ["c", "0", "a1_b.c-d", "4f9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"] {
            assert!(add(id, "eth0").msg.contains("cannot be opened"), "{id}: {:?}", add(id, "eth0"));
        }
        for id in ["-a", "_a", ".a", "a/b", "a b", "a:b", "ä", "a\n", "../../etc"] {
            let e = add(id, "eth0");
            assert_eq!(e.code, code::BAD_ENVIRONMENT, "{id:?}: {e:?}");
            assert!(e.msg.contains("CNI_CONTAINERID"), "{id:?}: {e:?}");
        }
        for ifname in ["eth0", "net1", "a", "fifteen-bytes-x", "ä-ö"] {
            assert!(add("c", ifname).msg.contains("cannot be opened"), "{ifname}: {:?}", add("c", ifname));
        }
        for ifname in [".", "..", "a/b", "a:b", "a b", "tab\t", "sixteen-bytes-xy", "ääääääää"] {
            let e = add("c", ifname);
            assert_eq!(e.code, code::BAD_ENVIRONMENT, "{ifname:?}: {e:?}");
            assert!(e.msg.contains("not a valid interface name"), "{ifname:?}: {e:?}");
        }
        // DEL checks them too (it names host interfaces after them).
        let (_, r) = invoke(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "../x"), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(r.unwrap_err().code, code::BAD_ENVIRONMENT);
    }

    #[test]
    fn the_plugins_own_and_the_hosts_namespace_are_refused() {
        for path in ["/proc/self/ns/net", "/proc/1/ns/net"] {
            // Where PID 1's namespace cannot be read (a sandbox hiding it), opening fails instead.
            // (DEL and CHECK then ask the router first; DEL goes on as for a namespace that is gone.)
            let readable = std::fs::metadata(path).is_ok();
            let needle = if readable { "network namespace" } else { "cannot be opened" };
            for cmd in ["ADD", "DEL", "CHECK"].into_iter().filter(|c| readable || *c == "ADD") {
                let (_, r) = invoke(
                    &[("CNI_COMMAND", cmd), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", path), ("CNI_IFNAME", "eth0")],
                    r#"{"cniVersion":"1.0.0","apiSocket":"/nonexistent/weft.sock","prevResult":{"ips":[{"address":"10.32.0.5/12"}]}}"#,
                );
                let e = r.unwrap_err();
                assert_eq!(e.code, code::BAD_ENVIRONMENT, "{cmd} {path}: {e:?}");
                assert!(e.msg.contains(needle) && e.msg.contains(path), "{cmd} {path}: {e:?}");
            }
        }
        // Another path to the same namespace is refused too: identity is by inode, not by name.
        let own = format!("/proc/{}/ns/net", std::process::id());
        let (_, r) = invoke(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", &own), ("CNI_IFNAME", "eth0")], r#"{"cniVersion":"1.0.0"}"#);
        let e = r.unwrap_err();
        assert!(e.msg.contains("this plugin's own network namespace") || e.msg.contains("the host's network namespace"), "{e:?}");
    }

    #[test]
    fn an_error_json_names_what_failed_in_msg_and_its_causes_in_details() {
        let (version, r) = invoke(&[("CNI_COMMAND", "STATUS")], r#"{"cniVersion":"1.1.0","apiSocket":"/nonexistent/weft.sock"}"#);
        let e = r.unwrap_err();
        assert!(e.msg.starts_with("weft is not available: the weft router is not running (no API at /nonexistent/weft.sock)"), "{e:?}");
        assert!(e.details.contains("No such file or directory"), "the connect error reaches the runtime: {e:?}");
        assert!(!e.msg.contains("No such file"), "each cause is said once: {e:?}");
        let json: serde_json::Value = serde_json::from_str(&e.to_json(&version)).unwrap();
        assert_eq!((json["code"].as_u64(), json["msg"].as_str(), json["details"].as_str()), (Some(50), Some(e.msg.as_str()), Some(e.details.as_str())));
    }

    #[test]
    fn cni_args_are_parsed_leniently() {
        let env = Env::read(|k| (k == "CNI_ARGS").then(|| "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;junk".to_owned()));
        assert_eq!(env.args.get("K8S_POD_NAME").map(String::as_str), Some("web-0"));
        assert_eq!(env.args.get("IgnoreUnknown").map(String::as_str), Some("1"));
    }

    #[test]
    fn results_have_the_shape_of_each_version() {
        let a = spec::Attached {
            bridge: "weft".into(),
            bridge_mac: Some("02:00:00:00:00:01".into()),
            host_if: "vw0123".into(),
            host_mac: None,
            pod_if: "eth0".into(),
            pod_mac: Some("02:00:00:00:00:02".into()),
            sandbox: "/var/run/netns/p".into(),
            address: "10.32.0.5/12".into(),
            gateway: Some("10.32.0.1".into()),
            mtu: 1376,
        };
        let v04 = spec::result("0.4.0", &a);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][0]["interface"], 2);
        assert_eq!(v04["interfaces"][2]["sandbox"], "/var/run/netns/p");
        assert!(v04["interfaces"][1].get("sandbox").is_none());
        let v10 = spec::result("1.0.0", &a);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][2].get("mtu").is_none());
        let v11 = spec::result("1.1.0", &a);
        assert_eq!(v11["interfaces"][2]["mtu"], 1376);
        assert_eq!(v11["routes"][0]["gw"], "10.32.0.1");
    }
}
