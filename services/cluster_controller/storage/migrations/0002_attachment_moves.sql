-- A live migration of the instance in progress (services/cluster_controller/migration.py): the node it is moving to
-- and that node's own initiator name, admitted by the export besides the attachment's own until the move settles.
ALTER TABLE attachments ADD COLUMN move_node_url TEXT NOT NULL DEFAULT '';
ALTER TABLE attachments ADD COLUMN move_initiator TEXT NOT NULL DEFAULT '';
