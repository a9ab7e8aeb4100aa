//! Nodes to dial targets (pure).
//!
//! Each Node other than this router's own is dialled at its first address of the chosen type
//! (`InternalIP` unless `--kube-address-type` says otherwise) on the mesh port; a Node without
//! such an address is not dialled.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Node;

/// The address type dialled by default.
pub const DEFAULT_ADDRESS_TYPE: &str = "InternalIP";

/// The Node's name.
pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// The Node's first address of type `kind` that parses as an IP address.
pub fn address(node: &Node, kind: &str) -> Option<IpAddr> {
    let status = node.status.as_ref()?;
    status.addresses.as_ref()?.iter().filter(|a| a.type_ == kind).find_map(|a| a.address.trim().parse().ok())
}

/// The dial targets (`ADDR:PORT`) of `nodes`, this router's own node `me` left out.
pub fn targets<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str, kind: &str, port: u16) -> BTreeSet<String> {
    nodes.into_iter().filter(|n| name(n) != me).filter_map(|n| address(n, kind)).map(|a| SocketAddr::new(a, port).to_string()).collect()
}

/// Builds a Node with one address per `(type, address)`, for tests and examples.
pub fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    Node {
        metadata: kube::api::ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
        status: Some(NodeStatus {
            addresses: Some(addresses.iter().map(|(t, a)| NodeAddress { type_: (*t).to_owned(), address: (*a).to_owned() }).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_node_is_dialled_at_its_address_of_the_chosen_type() {
        let nodes = [
            node("n1", &[("Hostname", "n1"), ("InternalIP", "192.0.2.1")]),
            node("n2", &[("InternalIP", "192.0.2.2"), ("ExternalIP", "203.0.113.2")]),
            node("n3", &[("ExternalIP", "203.0.113.3")]),
            node("n4", &[("InternalIP", "2001:db8::4")]),
            node("n5", &[("InternalIP", "not an address")]),
        ];
        let t = targets(&nodes, "n1", DEFAULT_ADDRESS_TYPE, 6783);
        assert_eq!(t, BTreeSet::from(["192.0.2.2:6783".to_owned(), "[2001:db8::4]:6783".to_owned()]), "n1 is us; n3 and n5 have no InternalIP");
        let t = targets(&nodes, "n9", "ExternalIP", 7000);
        assert_eq!(t, BTreeSet::from(["203.0.113.2:7000".to_owned(), "203.0.113.3:7000".to_owned()]));
    }
}
