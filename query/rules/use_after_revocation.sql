-- id: use_after_revocation
-- title: Identity used after its owner revoked it or its approval expired
-- severity: critical
-- owasp_nhi: NHI1
-- description: >
--   A credential, agent or workload acted after the revoked_at or expires_at its owner declared
--   (owners files). Offboarding happened on paper but not in fact (OWASP NHI1): the identity
--   still works.
WITH ended AS (
  -- A revocation ends an identity whatever its approval; an expiry ends only an approval.
  SELECT kind, id, owner,
         CASE WHEN revoked_at IS NOT NULL
                   AND (NOT approved OR expires_at IS NULL OR revoked_at <= expires_at)
              THEN revoked_at ELSE expires_at END AS ended_at,
         CASE WHEN revoked_at IS NOT NULL
                   AND (NOT approved OR expires_at IS NULL OR revoked_at <= expires_at)
              THEN 'revoked' ELSE 'let the approval expire for' END AS how
  FROM owners
  WHERE revoked_at IS NOT NULL OR (approved AND expires_at IS NOT NULL)),
used AS (
  -- Only the spans of identities some ended owner row names.
  SELECT 'credential' AS kind, credential_fp AS id, start_time, trace_id, span_id
    FROM spans WHERE credential_fp IN (SELECT id FROM ended WHERE kind = 'credential')
  UNION ALL
  SELECT 'agent' AS kind, agent_id AS id, start_time, trace_id, span_id
    FROM spans WHERE agent_id IN (SELECT id FROM ended WHERE kind = 'agent')
  UNION ALL
  SELECT 'workload' AS kind, service_name AS id, start_time, trace_id, span_id
    FROM spans WHERE service_name IN (SELECT id FROM ended WHERE kind = 'workload')
  UNION ALL
  SELECT 'workload' AS kind, workload_id AS id, start_time, trace_id, span_id
    FROM spans
    WHERE (workload_id IS DISTINCT FROM service_name)
      AND workload_id IN (SELECT id FROM ended WHERE kind = 'workload')),
vouched AS (
  -- Another approved owner still answering for the identity at that moment clears it.
  SELECT u.kind, u.id, u.start_time, u.span_id
  FROM used u
  JOIN owners o ON o.kind = u.kind AND o.id = u.id
  WHERE o.approved
    AND (o.expires_at IS NULL OR o.expires_at > u.start_time)
    AND (o.revoked_at IS NULL OR o.revoked_at > u.start_time))
SELECT max(u.start_time) AS time,
       u.kind AS subject_kind,
       u.id AS subject_id,
       concat('used in ', count(*), ' span(s) after ', e.owner, ' ', e.how, ' it at ',
              CAST(e.ended_at AS VARCHAR)) AS detail,
       first_value(u.trace_id ORDER BY u.start_time DESC, u.span_id) AS trace_id,
       first_value(u.span_id ORDER BY u.start_time DESC, u.span_id) AS span_id
FROM used u
JOIN ended e ON e.kind = u.kind AND e.id = u.id
LEFT JOIN vouched v
  ON v.kind = u.kind AND v.id = u.id AND v.start_time = u.start_time AND v.span_id = u.span_id
WHERE u.start_time >= e.ended_at AND v.kind IS NULL
GROUP BY u.kind, u.id, e.owner, e.how, e.ended_at
