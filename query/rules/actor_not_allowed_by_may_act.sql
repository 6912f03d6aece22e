-- id: actor_not_allowed_by_may_act
-- title: Token exchanged for an actor its may_act does not allow
-- severity: high
-- owasp_nhi: NHI4
-- description: >
--   A token was derived (RFC 8693 token exchange) from a token whose may_act claim names who
--   may act for its subject, and the derived token's actor is not among them. The authorization
--   server accepted an exchange it should have refused (OWASP NHI4, insecure authentication).
WITH derived AS (
  SELECT DISTINCT src_id AS child, dst_id AS parent
  FROM edges WHERE relation = 'derived_from'),
tokens AS (
  -- Only tokens on a derived_from edge: grouping every token would hold millions of groups.
  SELECT credential_fp,
         first_value(token_actors) AS actors,
         first_value(token_may_act) AS may_act,
         max(start_time) AS last_seen,
         first_value(trace_id ORDER BY start_time DESC, span_id) AS trace_id,
         first_value(span_id ORDER BY start_time DESC, span_id) AS span_id
  FROM spans
  WHERE credential_kind = 'jwt'
    AND (credential_fp IN (SELECT child FROM derived) OR credential_fp IN (SELECT parent FROM derived))
  GROUP BY credential_fp)
SELECT c.last_seen AS time,
       'credential' AS subject_kind,
       c.credential_fp AS subject_id,
       concat(c.actors[1], ' acts with a token exchanged from ', d.parent,
              ', whose may_act allows only ', array_to_string(p.may_act, ', ')) AS detail,
       c.trace_id,
       c.span_id
FROM derived d
JOIN tokens c ON c.credential_fp = d.child
JOIN tokens p ON p.credential_fp = d.parent
WHERE cardinality(p.may_act) > 0
  AND cardinality(c.actors) > 0
  AND NOT array_has(p.may_act, c.actors[1])
