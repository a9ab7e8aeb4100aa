//! The CNI protocol: which spec versions this plugin speaks, and the error JSON of the spec.

use serde::Serialize;
use serde_json::Value;

/// The spec versions this plugin speaks (CNI 0.4.0, 1.0.0 and 1.1.0).
pub(crate) const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The spec's error codes this plugin uses.
pub(crate) mod code {
    /// Incompatible CNI version.
    pub(crate) const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub(crate) const BAD_ENVIRONMENT: u32 = 4;
    /// Failure to decode content.
    pub(crate) const DECODE: u32 = 6;
}

/// What to print, and whether the plugin succeeded.
pub(crate) struct Answer {
    pub(crate) ok: bool,
    pub(crate) body: String,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    details: String,
}

fn error(version: &str, code: u32, msg: impl Into<String>, details: impl Into<String>) -> Answer {
    let e = ErrorJson { cni_version: version, code, msg: msg.into(), details: details.into() };
    Answer { ok: false, body: serde_json::to_string(&e).unwrap_or_else(|_| String::from("{}")) }
}

/// The version the configuration asks for: `cniVersion`, defaulting to the newest we speak.
fn requested_version(stdin: &[u8]) -> Result<String, Answer> {
    let newest = SUPPORTED[SUPPORTED.len() - 1];
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(newest.to_owned());
    }
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| error(newest, code::DECODE, "network configuration on stdin is not valid JSON", e.to_string()))?;
    Ok(v.get("cniVersion").and_then(Value::as_str).unwrap_or(newest).to_owned())
}

/// Handles one invocation.
pub(crate) fn dispatch(command: &str, stdin: &[u8]) -> Answer {
    let version = match requested_version(stdin) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let newest = SUPPORTED[SUPPORTED.len() - 1];
    if command != "VERSION" && !SUPPORTED.contains(&version.as_str()) {
        return error(
            newest,
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {version} is not supported"),
            format!("weft-cni speaks {}", SUPPORTED.join(", ")),
        );
    }
    match command {
        "VERSION" => {
            let body = serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED });
            Answer { ok: true, body: body.to_string() }
        }
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => error(
            &version,
            code::BAD_ENVIRONMENT,
            format!("CNI_COMMAND {command} is not supported by this build of weft-cni yet"),
            "only VERSION is implemented; pod attachment arrives with the weft router",
        ),
        "" => error(&version, code::BAD_ENVIRONMENT, "CNI_COMMAND is not set", "set CNI_COMMAND to ADD, DEL, CHECK, STATUS, GC or VERSION"),
        other => error(&version, code::BAD_ENVIRONMENT, format!("unknown CNI_COMMAND {other:?}"), "expected ADD, DEL, CHECK, STATUS, GC or VERSION"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(a: &Answer) -> Value {
        serde_json::from_str(&a.body).unwrap()
    }

    #[test]
    fn version_lists_supported_versions_in_the_requested_version() {
        let a = dispatch("VERSION", br#"{"cniVersion":"0.4.0"}"#);
        assert!(a.ok);
        let v = json(&a);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(json(&dispatch("VERSION", b"")).get("cniVersion").unwrap(), "1.1.0");
    }

    #[test]
    fn errors_carry_spec_codes() {
        let bad_json = dispatch("ADD", b"{not json");
        assert!(!bad_json.ok);
        assert_eq!(json(&bad_json)["code"], 6);
        let old = dispatch("ADD", br#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(json(&old)["code"], 1);
        let unset = dispatch("", br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(json(&unset)["code"], 4);
        assert!(json(&unset)["msg"].as_str().unwrap().contains("CNI_COMMAND"));
        let add = dispatch("ADD", br#"{"cniVersion":"1.1.0"}"#);
        assert!(!add.ok, "ADD must not pretend to succeed before it exists");
        assert_eq!(json(&add)["cniVersion"], "1.1.0");
    }
}
