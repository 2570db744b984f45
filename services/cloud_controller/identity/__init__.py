"""Identity: accounts, users, access keys and X.509 user certificates (`store`), the eucarc and credentials
zip (`credentials`), the admin account made at first start (`bootstrap`) and the signed identity interface
Walrus calls (`rpc`)."""
