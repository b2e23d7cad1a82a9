//! gRPC server reflection in both protocol versions, from one place.
//!
//! The reflection protocol (grpc/grpc `doc/server-reflection.md`) exists as
//! `grpc.reflection.v1` and as its predecessor `grpc.reflection.v1alpha`: the
//! same messages under another package. Clients speak one or the other:
//! tonic's client speaks v1, while Python's `grpcio-reflection` ships only a
//! v1alpha client, as do many GUI tools. So every daemon serves both, built
//! from the same descriptors, and each version lists both reflection services:
//! whichever version a client speaks, it sees every service the server has.

use tonic::service::Routes;
use tonic_reflection::server::Builder;

/// The descriptor sets given cannot be served by reflection.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot build the reflection service: {0}; it needs encoded google.protobuf.FileDescriptorSet \
     bytes, such as those a build script writes with its generated code"
)]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// Both versions of the reflection service, v1 and v1alpha, describing the
/// services of `file_descriptor_sets` (each an encoded
/// `google.protobuf.FileDescriptorSet`) and the two reflection services
/// themselves. Add them to a server with `Server::add_routes`.
///
/// # Errors
///
/// When a set cannot be decoded, or a file in it lacks a name.
pub fn reflection_services(file_descriptor_sets: &[&[u8]]) -> Result<Routes, ReflectionError> {
    // The builder is consumed by each build: one builder per version.
    let v1 = builder(file_descriptor_sets).build_v1()?;
    let v1alpha = builder(file_descriptor_sets).build_v1alpha()?;
    Ok(Routes::new(v1).add_service(v1alpha))
}

/// A builder with `file_descriptor_sets` and the descriptors of both
/// reflection services. By itself, each build would describe only its own
/// version's reflection service.
fn builder<'b>(file_descriptor_sets: &[&'b [u8]]) -> Builder<'b> {
    let builder = Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    file_descriptor_sets
        .iter()
        .copied()
        .fold(builder, Builder::register_encoded_file_descriptor_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reflection_descriptors_alone_build() {
        assert!(reflection_services(&[]).is_ok());
    }

    #[test]
    fn bytes_that_are_no_descriptor_set_are_refused_with_what_is_needed() {
        // Field 1, length-delimited, claiming 5 bytes where there are 2.
        let error = reflection_services(&[&[0x0a, 0x05, 0x01, 0x02]])
            .expect_err("a truncated set is refused");
        let message = error.to_string();
        assert!(
            message.contains("FileDescriptorSet"),
            "the message says what is needed: {message}"
        );
    }
}
