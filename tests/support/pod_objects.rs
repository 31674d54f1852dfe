//! The Kubernetes objects that put a [`super::NetnsPod`] behind a Service
//! without a kubelet or an endpoints controller (SUBSTRATE.md, "Pods without
//! a kubelet"): a Pod whose status says Running at the pod IP, a Service
//! without selector, and Endpoints and an EndpointSlice whose address points
//! at the Pod (the apiserver's services/proxy only goes to addresses of
//! existing Pods; it reads Endpoints up to 1.3x and EndpointSlices since).
//! Every port N is named `port-N` in all three, as services/proxy matches
//! Service and Endpoints ports by name.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EndpointAddress, EndpointPort, EndpointSubset, Endpoints,
    ObjectReference, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn port_name(port: u16) -> String {
    format!("port-{port}")
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some([("app".to_owned(), name.to_owned())].into()),
        ..ObjectMeta::default()
    }
}

/// The Pod, without status (the status subresource is set separately).
pub fn pod(namespace: &str, name: &str, ports: &[u16]) -> Pod {
    let ports = ports.iter().map(|&p| ContainerPort {
        name: Some(port_name(p)),
        container_port: p.into(),
        ..ContainerPort::default()
    });
    Pod {
        metadata: meta(namespace, name),
        spec: Some(PodSpec {
            // Any node name: no kubelet will look at it.
            node_name: Some("netns-pods".into()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "main".into(),
                image: Some("netns-pod.invalid/never-pulled".into()),
                ports: Some(ports.collect()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The status a kubelet would report for the running process.
pub fn running_status(pod_ip: Ipv4Addr, host_ip: Ipv4Addr) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        host_ip: Some(host_ip.to_string()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    }
}

/// The Service, without selector; it needs at least one port.
pub fn service(namespace: &str, name: &str, ports: &[u16]) -> Service {
    let ports = ports.iter().map(|&p| ServicePort {
        name: Some(port_name(p)),
        port: p.into(),
        target_port: Some(IntOrString::Int(p.into())),
        ..ServicePort::default()
    });
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            ports: Some(ports.collect()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Endpoints of the Service: the pod IP, referring to the Pod.
pub fn endpoints(namespace: &str, name: &str, pod_ip: Ipv4Addr, ports: &[u16]) -> Endpoints {
    let ports = ports.iter().map(|&p| EndpointPort {
        name: Some(port_name(p)),
        port: p.into(),
        protocol: Some("TCP".into()),
        ..EndpointPort::default()
    });
    Endpoints {
        metadata: meta(namespace, name),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: pod_ip.to_string(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ObjectReference::default()
                }),
                ..EndpointAddress::default()
            }]),
            ports: Some(ports.collect()),
            not_ready_addresses: None,
        }]),
    }
}

/// The EndpointSlice of the Service (`discovery.k8s.io/v1`, served from
/// 1.21): what current apiservers' services/proxy reads; the same address
/// and ports as [`endpoints`].
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    pod_ip: Ipv4Addr,
    ports: &[u16],
) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|&p| serde_json::json!({"name": port_name(p), "port": p, "protocol": "TCP"}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [pod_ip.to_string()],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": name, "namespace": namespace},
        }],
        "ports": ports,
    })
}
