-- Object tags: each version keeps its own tag set (JSON object), written with the version's row so a version
-- and its tags appear or vanish together.
ALTER TABLE versions ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
