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
children AS (
  -- Only tokens on a derived_from edge: grouping every token would hold millions of groups.
  SELECT credential_fp,
         first_value(token_actors) AS actors,
         max(start_time) AS last_seen,
         first_value(trace_id ORDER BY start_time DESC, span_id) AS trace_id,
         first_value(span_id ORDER BY start_time DESC, span_id) AS span_id
  FROM spans
  WHERE credential_kind = 'jwt' AND credential_fp IN (SELECT child FROM derived)
  GROUP BY credential_fp),
parents AS (
  -- Each parent's may_act beside the child it was exchanged for, so that a filter on the
  -- child (a report's subject) reaches the derived_from edges and, through the join, the
  -- parent's spans.
  SELECT d.child, d.parent, first_value(s.token_may_act) AS may_act
  FROM derived d JOIN spans s ON s.credential_fp = d.parent
  WHERE s.credential_kind = 'jwt'
  GROUP BY d.child, d.parent)
SELECT c.last_seen AS time,
       'credential' AS subject_kind,
       c.credential_fp AS subject_id,
       concat(c.actors[1], ' acts with a token exchanged from ', p.parent,
              ', whose may_act allows only ', array_to_string(p.may_act, ', ')) AS detail,
       c.trace_id,
       c.span_id
FROM children c
JOIN parents p ON p.child = c.credential_fp
WHERE cardinality(p.may_act) > 0
  AND cardinality(c.actors) > 0
  AND NOT array_has(p.may_act, c.actors[1])
