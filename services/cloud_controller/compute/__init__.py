"""The CLC's compute state: VM types, images, reservations and instances, addresses, admission control, and the
calls to and pushes from the Cluster Controllers. Pure logic and state; the EC2 actions in `actions/` call it.

Modules
- `engine.Compute` (the service's `clc.compute`): builds and owns the parts below; lookups, terminate, suspend,
  reboot, console, and what the parts share (freeing a terminated instance's resources, change listeners,
  background tasks). Hooks: `on_change` (instances whose state changed), `on_forget` (buried instance ids).
- `launch.Launcher` (`clc.compute.launcher`): RunInstances (admission, addresses, network, the CC call, rollback).
- `reports.Reports` (`clc.compute.reports`): instance state from the CCs' `NotifyInstances` pushes and polls.
- `polling.Poller` (`clc.compute.poller`): the per-zone polling loops, housekeeping.
- `capacity.CapacityRefresh` (`clc.compute.capacity`): the zones' DescribeResources, now or coalesced soon after.
  (Each part is handed what it uses by `Compute`: its collaborators, and the engine itself typed as the part's
  own narrow protocol, `LaunchEngine`, `ReportsEngine`, `PollerEngine`: only the lookups and shared actions it
  calls.)
- `tags.Tags`, `security_groups.SecurityGroups`, `key_pairs.KeyPairs` (`clc.compute.tags`, `.security_groups`,
  `.key_pairs`): the tag store and its registry of taggable types, security groups and rules, key pairs.
- `store.Store` (`clc.compute.store`): reservations, instances and images in memory, written through to SQLite
  (tables in migrations/0002_compute.sql). `LIVE_STATES`, `STATE_CODES`.
- `admission.Admission`: per-zone capacity reports and reservation tokens (free = reported - held).
- `vmtypes.VmTypes` (`clc.compute.vmtypes`): the VM types and their rules (`check`, `set`, `delete`, `reset`);
  the admin pages call these, `koala vm-types` and the admin RPC (`admin_rpc`) too.
- `images.Images` (`clc.compute.images`): RegisterImage/DeregisterImage/visibility/launch permissions, with
  Walrus's ValidateImage/CacheImage/FlushImage through `walrus.WalrusImages`.
- `addresses`, `elastic.Elastic` (`clc.compute.elastic`): the public pool and elastic addresses.
- `networks.Networks`, `netsync.NetworkSync`: VLAN per `<account>-<group>` network and index per instance, and
  the group rule sets pushed to the CCs (ConfigureNetwork) in MANAGED modes.
- `cc_client.ClusterClient`: the CLC -> CC calls of common/messages/clc_cc.py.
- `setup.install(clc)`: wires all of it into the service (NotifyInstances for role cc, metadata routes, polls).
"""
