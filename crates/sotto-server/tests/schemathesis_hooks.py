# Loaded by schemathesis (SCHEMATHESIS_HOOKS, set by tests/schemathesis.rs): an upload's bytes go
# as tus' `application/offset+octet-stream`, which schemathesis sends as it sends any raw bytes.
import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
