-- Small objects' bytes kept in the database, committed in the same transaction as their version (one group
-- commit instead of a data file and its fsyncs). A version's segment names its bytes here by an id starting
-- with "i"; the row goes in the transaction that removes the version.
CREATE TABLE inline_data (
    data_id TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
