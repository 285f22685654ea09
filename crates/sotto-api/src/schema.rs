//! Schema-only types for the OpenAPI document (feature `openapi`): the shapes of the strings the
//! wire types carry (ids, usernames, base64 of a known length). The wire types stay `String` and
//! [`B64`](crate::B64); their fields name these with `schema(value_type = ...)`, so every rule the
//! server checks is stated once here, next to the constants it checks against.

use std::borrow::Cow;

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// The characters standard base64 takes for `n` bytes.
pub const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn bytes() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
}

#[doc(hidden)]
pub use utoipa as __utoipa;

/// Defines a schema-only type named `$name` whose schema is what `$build` (an `ObjectBuilder`)
/// builds, for a `schema(value_type = ...)` or a parameter to name. sottod defines its header
/// types with it too.
#[macro_export]
macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident, $build:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl $crate::schema::__utoipa::PartialSchema for $name {
            fn schema() -> $crate::schema::__utoipa::openapi::RefOr<
                $crate::schema::__utoipa::openapi::schema::Schema,
            > {
                let b: $crate::schema::__utoipa::openapi::schema::ObjectBuilder = $build;
                $crate::schema::__utoipa::openapi::RefOr::T(
                    $crate::schema::__utoipa::openapi::schema::Schema::Object(b.build()),
                )
            }
        }

        impl $crate::schema::__utoipa::ToSchema for $name {
            fn name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed(stringify!($name))
            }
        }
    };
}

crate::schema_type!(
    /// A username.
    Username,
    string()
        .pattern(Some(crate::USERNAME_PATTERN))
        .description(Some("3 to 32 of a-z, 0-9, `_`, `.` and `-`"))
);

crate::schema_type!(
    /// A device id.
    DeviceId,
    string()
        .pattern(Some(crate::HEX32_PATTERN))
        .description(Some("A device id: 32 lowercase hex digits"))
);

crate::schema_type!(
    /// A conversation id.
    ConversationId,
    string()
        .pattern(Some(crate::HEX32_PATTERN))
        .description(Some(
            "A conversation id, also its MLS group id: 32 lowercase hex digits"
        ))
);

crate::schema_type!(
    /// A link id.
    LinkId,
    string().pattern(Some(crate::HEX64_PATTERN)).description(Some(
        "A link id, derived from the link secret by a hash: 64 lowercase hex digits"
    ))
);

crate::schema_type!(
    /// A blob id.
    BlobId,
    string().pattern(Some(crate::HEX64_PATTERN)).description(Some(
        "An attachment blob's id (the last segment of its upload's Location): 64 lowercase hex digits"
    ))
);

crate::schema_type!(
    /// A device's bearer token.
    Token,
    string()
        .pattern(Some("^[0-9a-f]{32}:[0-9a-f]{64}$"))
        .description(Some(
            "`DEVICE_ID:SECRET`, sent as `Authorization: Bearer DEVICE_ID:SECRET`"
        ))
);

crate::schema_type!(
    /// A conversation's kind.
    ConversationKind,
    string().enum_values(Some(["dm", "group"]))
);

crate::schema_type!(
    /// An Ed25519 public key.
    IdentityKey,
    bytes()
        .min_length(Some(base64_len(32)))
        .max_length(Some(base64_len(32)))
        .description(Some("An Ed25519 public key: 32 bytes, base64"))
);

crate::schema_type!(
    /// An encrypted account bundle.
    LinkBundleBytes,
    bytes()
        .min_length(Some(base64_len(1)))
        .max_length(Some(base64_len(crate::MAX_LINK_BUNDLE)))
        .description(Some(
            "The account bundle encrypted under the link secret: 1 to 4,098 bytes, base64"
        ))
);

crate::schema_type!(
    /// An MLS ciphersuite the server takes.
    Ciphersuite,
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .description(Some(
            "An MLS ciphersuite's IANA number; the server's document lists the ones it takes"
        ))
);

impl PartialSchema for crate::B64 {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            bytes().description(Some("Standard base64")).build(),
        ))
    }
}

impl ToSchema for crate::B64 {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Base64")
    }
}
