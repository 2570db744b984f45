-- The local image's architecture, given to the remote RegisterImage (uploads made before it: x86_64, as then).
ALTER TABLE uploads ADD COLUMN architecture TEXT NOT NULL DEFAULT '';
