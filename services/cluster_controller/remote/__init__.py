"""A remote zone: a Cluster Controller whose instances run in another EC2-compatible cloud (cloud bursting).

Configured by KOALA_REMOTE_* (settings.py), it answers the CLC with the same operations as a zone of local nodes
(zone.py), speaking EC2 to the remote through botocore's model and signer (ec2.py). The remote's access key is
read from a file only the CC's user can read (credentials.py). Key pairs and security groups are made remotely
under per-cloud names (resources.py); the zone's own state is in remote.db (store.py); setup.py wires it all
into the CC service.
"""
