//! Generated wire types and gRPC stubs. No logic lives here.

#![allow(clippy::all, clippy::pedantic)]

pub mod common {
    tonic::include_proto!("tessera.common");
}

pub mod tablet {
    tonic::include_proto!("tessera.tablet");
}

pub mod nameserver {
    tonic::include_proto!("tessera.nameserver");
}

pub mod taskmanager {
    tonic::include_proto!("tessera.taskmanager");
}
