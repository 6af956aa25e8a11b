-- Queries by kind and result (`kind=test&result=fail`) read every node of the kind and
-- sorted them; with this index they walk the matching nodes in id order (labwire-bench,
-- queries scenario).
CREATE INDEX nodes_kind_result ON nodes(kind, result, id);
