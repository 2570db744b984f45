"""The EC2 AMI bundle format (reference/bundles.md), shared by the `koala` bundling commands and Walrus.

- `manifest`: the manifest model, a defusedxml parser with limits, a byte-exact renderer, and the signature
  (RSASSA-PKCS1-v1_5/SHA-1 over the raw `<machine_configuration>` + `<image>` text).
- `keys`: the AES key/IV wrapping (RSA PKCS#1 v1.5 over the 32-character hex string).
- `pgzip`: parallel gzip that writes standard multi-member gzip.
- `pipeline`: the streaming bundle (tar -> gzip -> AES-128-CBC -> parts) and decrypt (parts -> AES -> gunzip ->
  untar) passes, each in constant memory with its stages on threads (zlib, hashlib and OpenSSL release the GIL).
"""

from common.bundle.errors import BundleError

__all__ = ["BundleError"]
