"""The CLC's compute state: VM types, images, reservations and instances, addresses, admission control, and the
calls to and pushes from the Cluster Controllers. Pure logic and state; the EC2 actions in `actions/` call it."""
