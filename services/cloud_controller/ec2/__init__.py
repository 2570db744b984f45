"""The EC2 Query protocol of the Cloud Controller.

- `model`: botocore's EC2 service model (the source of truth for parameter names and response shapes),
- `params`: flattened query parameters (`IpPermissions.1.IpRanges.1.CidrIp`) -> a dict shaped like the input shape,
- `xml`: a dict shaped like the output shape -> EC2 response XML in the client's `Version` namespace; error XML,
- `auth`: SigV2 (HmacSHA1/HmacSHA256) and SigV4 verification,
- `filters`: EC2 `Filter.N.Name/Value.M` matching (wildcards, `tag:KEY`),
- `frontend`: the aiohttp handler at `/services/Eucalyptus`, `/services/compute` and `/` that ties them together
  and dispatches to the action registry in `services.cloud_controller.actions`.
"""
