//! herd's integration tests, in one binary so that the suite links once: real ONNX
//! Runtime, real gRPC over loopback, the real `herd` executable.
#![allow(dead_code)]

mod addresses;
mod binary;
mod budgets;
mod cli;
mod cli_cluster;
mod cluster;
mod cluster_support;
mod connections;
mod dash;
mod doors;
mod failover_client;
mod gpu;
mod hosts;
mod immich;
mod kserve_http;
mod limits;
mod netbed;
mod overload;
mod partitions;
mod poison;
mod priority;
mod reconfigure;
mod repository;
mod schedulers;
mod serving;
mod storage;
mod support;
mod tls;
mod ttl;
mod wake;
